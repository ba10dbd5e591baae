//! Operator accounts: the rules for names and passwords, argon2id hashing, and every change
//! to an account (create, password, role, disable, API token issue and revoke), each
//! written with its audit entry in one transaction. Used by the admin pages and by
//! `riac-node user ...`. This module never logs or stores a password or a token value;
//! only their hashes reach the database.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::TryRngCore;

use crate::store::users::{self, Role, User};
use crate::store::{audit, chain::sha256_hex, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("user name {0:?} is not valid: use 2-32 characters of a-z 0-9 . _ - starting with a letter (\"auto\", \"system\" and \"cli\" are reserved)")]
    InvalidUsername(String),
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?} on this node (riac-node user list shows the accounts)")]
    NoSuchUser(String),
    #[error("no active API token with id {0:?} (ids are 12 hex digits: riac-node user tokens NAME lists them)")]
    NoSuchToken(String),
    #[error("role {0:?} is not one of: operator, supervisor, admin, scanner")]
    InvalidRole(String),
    #[error("{0:?} is the last enabled admin: create or enable another admin first")]
    LastAdmin(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("cannot read the password: {0}")]
    Input(std::io::Error),
    #[error("the two passwords differ")]
    Mismatch,
    #[error("no database at {0}: is --data-dir right? (the node creates it at its first start, or `riac-node user add` does)")]
    NoDatabase(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 256;
const RESERVED: [&str; 3] = ["auto", "system", "cli"];

/// Lower-cases and checks a user name. Names appear in verdicts (`decided_by`) and audit
/// lines, so they are short and plain.
pub fn check_username(name: &str) -> Result<String, AccountError> {
    let n = name.trim().to_ascii_lowercase();
    let ok = (2..=32).contains(&n.len())
        && n.as_bytes()[0].is_ascii_lowercase()
        && n.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && !RESERVED.contains(&n.as_str());
    if ok {
        Ok(n)
    } else {
        Err(AccountError::InvalidUsername(name.to_string()))
    }
}

pub fn check_password(password: &str, username: &str) -> Result<(), AccountError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(AccountError::WeakPassword(
            "it must be at least 10 characters long",
        ));
    }
    if n > MAX_PASSWORD {
        return Err(AccountError::WeakPassword(
            "it must be at most 256 characters long",
        ));
    }
    if password
        .to_ascii_lowercase()
        .contains(&username.to_ascii_lowercase())
    {
        return Err(AccountError::WeakPassword(
            "it must not contain the user name",
        ));
    }
    if password
        .chars()
        .all(|c| c == password.chars().next().unwrap_or(' '))
    {
        return Err(AccountError::WeakPassword(
            "it must not be one repeated character",
        ));
    }
    Ok(())
}

pub fn parse_role(s: &str) -> Result<Role, AccountError> {
    Role::parse(s.trim()).ok_or_else(|| AccountError::InvalidRole(s.to_string()))
}

/// argon2id with the crate's defaults (m = 19 MiB, t = 2, p = 1: the OWASP baseline).
/// CPU-heavy (tens of milliseconds): call off the async runtime.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| AccountError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// True when `password` matches the stored PHC string. CPU-heavy, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a real password, verified against when the user name is unknown, so that a
/// wrong name costs as long as a wrong password and names cannot be probed by timing.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("not-a-real-password-0").unwrap_or_default())
}

/// 32 random bytes from the OS, hex: session cookies, CSRF tokens, API tokens.
pub fn new_secret() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the OS random number generator failed");
    hex::encode(b)
}

/// What the database keeps of a secret.
pub fn secret_hash(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

async fn hash_off_runtime(password: String) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))?
}

async fn find_user(store: &Store, username: &str) -> Result<User, AccountError> {
    let name = username.trim().to_ascii_lowercase();
    let n2 = name.clone();
    store
        .read(move |c| users::find(c, &n2))
        .await?
        .map(|(u, _)| u)
        .ok_or(AccountError::NoSuchUser(name))
}

/// Creates an account; `actor` is who did it (an admin's name, or `cli`).
pub async fn create_user(
    store: &Store,
    actor: &str,
    username: &str,
    role: Role,
    password: &str,
) -> Result<User, AccountError> {
    let name = check_username(username)?;
    check_password(password, &name)?;
    let hash = hash_off_runtime(password.to_string()).await?;
    let actor = actor.to_string();
    let n2 = name.clone();
    let created = store
        .write(move |t| {
            if users::find(t, &n2)?.is_some() {
                return Ok(None);
            }
            users::insert(t, &n2, role, &hash)?;
            audit::append(
                t,
                &actor,
                "user.created",
                Some(&format!("user:{n2}")),
                serde_json::json!({"username": n2, "role": role.as_str()}),
            )?;
            Ok(users::find(t, &n2)?.map(|(u, _)| u))
        })
        .await?;
    created.ok_or(AccountError::Exists(name))
}

pub async fn set_password(
    store: &Store,
    actor: &str,
    username: &str,
    password: &str,
) -> Result<(), AccountError> {
    let user = find_user(store, username).await?;
    check_password(password, &user.username)?;
    let hash = hash_off_runtime(password.to_string()).await?;
    let actor = actor.to_string();
    store
        .write(move |t| {
            let revoked = users::list_tokens(t, Some(user.id))?
                .into_iter()
                .filter(|k| k.state == "active")
                .count();
            users::set_password(t, user.id, &hash, false)?;
            audit::append(
                t,
                &actor,
                "user.password_changed",
                Some(&format!("user:{}", user.username)),
                serde_json::json!({"username": user.username, "tokens_revoked": revoked}),
            )?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Disables (ends sessions, revokes tokens) or re-enables an account.
pub async fn set_disabled(
    store: &Store,
    actor: &str,
    username: &str,
    disabled: bool,
) -> Result<(), AccountError> {
    let user = find_user(store, username).await?;
    let actor = actor.to_string();
    let ok = store
        .write(move |t| {
            if disabled
                && user.role == Role::Admin
                && !user.disabled
                && users::enabled_admins(t)? <= 1
            {
                return Ok(false);
            }
            users::set_disabled(t, user.id, disabled)?;
            audit::append(
                t,
                &actor,
                if disabled {
                    "user.disabled"
                } else {
                    "user.enabled"
                },
                Some(&format!("user:{}", user.username)),
                serde_json::json!({"username": user.username}),
            )?;
            Ok(true)
        })
        .await?;
    if ok {
        Ok(())
    } else {
        Err(AccountError::LastAdmin(username.to_string()))
    }
}

pub async fn set_role(
    store: &Store,
    actor: &str,
    username: &str,
    role: Role,
) -> Result<(), AccountError> {
    let user = find_user(store, username).await?;
    let actor = actor.to_string();
    let ok = store
        .write(move |t| {
            if user.role == Role::Admin
                && role != Role::Admin
                && !user.disabled
                && users::enabled_admins(t)? <= 1
            {
                return Ok(false);
            }
            users::set_role(t, user.id, role)?;
            audit::append(
                t,
                &actor,
                "user.role_changed",
                Some(&format!("user:{}", user.username)),
                serde_json::json!({"username": user.username, "from": user.role.as_str(), "to": role.as_str()}),
            )?;
            Ok(true)
        })
        .await?;
    if ok {
        Ok(())
    } else {
        Err(AccountError::LastAdmin(username.to_string()))
    }
}

/// A token just made: its value (shown once), public id and expiry.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub token: String,
    pub id: String,
    pub expires_at: Option<String>,
}

/// Makes an API token for the user (it acts with the user's role), valid for
/// `expires_days` when given, and returns it. Only its hash is kept: the value is shown
/// once.
pub async fn create_token(
    store: &Store,
    actor: &str,
    username: &str,
    label: &str,
    expires_days: Option<u32>,
) -> Result<NewToken, AccountError> {
    let user = find_user(store, username).await?;
    let token = format!("riac_{}", new_secret());
    let hash = secret_hash(&token);
    let id = hash[..users::TOKEN_ID_LEN].to_string();
    let expires_at = expires_days.map(|d| {
        crate::store::format_ts(
            time::OffsetDateTime::now_utc() + time::Duration::days(i64::from(d)),
        )
    });
    let (actor, label, exp, id2) = (
        actor.to_string(),
        label.to_string(),
        expires_at.clone(),
        id.clone(),
    );
    store
        .write(move |t| {
            users::insert_token(t, &hash, user.id, &label, exp.as_deref())?;
            audit::append(
                t,
                &actor,
                "user.token_created",
                Some(&format!("user:{}", user.username)),
                serde_json::json!({"username": user.username, "label": label, "token_id": id2, "expires_at": exp}),
            )?;
            Ok(())
        })
        .await?;
    Ok(NewToken {
        token,
        id,
        expires_at,
    })
}

/// Revokes one API token by its public id (of `username` when given: the admin page
/// revokes from a user's row). Returns the owner's name.
pub async fn revoke_token(
    store: &Store,
    actor: &str,
    id: &str,
    username: Option<&str>,
) -> Result<String, AccountError> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() != users::TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AccountError::NoSuchToken(id));
    }
    let user_id = match username {
        Some(u) => Some(find_user(store, u).await?.id),
        None => None,
    };
    let (actor, id2) = (actor.to_string(), id.clone());
    let owner = store
        .write(move |t| {
            let Some(owner) = users::revoke_token(t, &id2, user_id)? else {
                return Ok(None);
            };
            audit::append(
                t,
                &actor,
                "user.token_revoked",
                Some(&format!("user:{owner}")),
                serde_json::json!({"username": owner, "token_id": id2}),
            )?;
            Ok(Some(owner))
        })
        .await?;
    owner.ok_or(AccountError::NoSuchToken(id))
}

/// `riac-node demo`: an admin account named `demo` with a fresh random password, so that a
/// newcomer can log in. Returns (user name, password).
pub async fn ensure_demo_account(store: &Store) -> Result<(String, String), AccountError> {
    let password = new_secret()[..16].to_string();
    match create_user(store, "system", "demo", Role::Admin, &password).await {
        Ok(_) => {}
        Err(AccountError::Exists(_)) => set_password(store, "system", "demo", &password).await?,
        Err(e) => return Err(e),
    }
    Ok(("demo".into(), password))
}

/// Reads a password: from the terminal without echo (asked twice when `confirm`), or the
/// first line of stdin when stdin is not a terminal (scripts pipe it in). Never from argv,
/// where other users of the machine could read it in the process list.
pub fn read_password(prompt: &str, confirm: bool) -> Result<String, AccountError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(AccountError::Input)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = prompt_no_echo(prompt)?;
    if confirm {
        let second = prompt_no_echo("Repeat it: ")?;
        if first != second {
            return Err(AccountError::Mismatch);
        }
    }
    Ok(first)
}

fn prompt_no_echo(prompt: &str) -> Result<String, AccountError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    // Not a terminal (a pipe, a file): nothing to hide, read as it comes. Otherwise echo
    // off (a newline still echoed) and the original settings back on every path.
    let old = tcgetattr(&stdin).ok();
    if let Some(old) = &old {
        let mut quiet = old.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &quiet);
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(old) = &old {
        let _ = tcsetattr(&stdin, OptionalActions::Now, old);
    }
    r.map_err(AccountError::Input)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `riac-node user ...` subcommands.
#[derive(Debug, Clone)]
pub enum UserCommand {
    Add {
        username: String,
        role: String,
    },
    Passwd {
        username: String,
    },
    Disable {
        username: String,
    },
    Enable {
        username: String,
    },
    Role {
        username: String,
        role: String,
    },
    Token {
        username: String,
        label: String,
        expires_days: Option<u32>,
    },
    Tokens {
        username: String,
    },
    RevokeToken {
        id: String,
    },
    List,
}

/// Run as root on a data dir owned by the service user, act as that user: SQLite creates
/// its `-wal` and `-shm` files with the opener's owner, and root-owned ones would lock the
/// node out of its own database.
fn act_as_data_dir_owner(data_dir: &Path) -> Result<(), AccountError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    // SAFETY: plain credential calls; glibc applies them to every thread of the process.
    let ok = unsafe { libc::setegid(meta.gid()) == 0 && libc::seteuid(meta.uid()) == 0 };
    if !ok {
        return Err(AccountError::Input(std::io::Error::last_os_error()));
    }
    eprintln!(
        "(acting as uid {} gid {}, the owner of {})",
        meta.uid(),
        meta.gid(),
        data_dir.display()
    );
    Ok(())
}

/// Runs a `riac-node user` command on the database in `data_dir` (the node may be running:
/// SQLite serialises the two processes' writes). Returns what to print.
pub async fn cli(data_dir: &Path, cmd: UserCommand) -> Result<String, AccountError> {
    act_as_data_dir_owner(data_dir)?;
    let db = crate::config::db_in(data_dir);
    if !matches!(cmd, UserCommand::Add { .. }) && !db.is_file() {
        return Err(AccountError::NoDatabase(db.display().to_string()));
    }
    if !db.is_file() {
        std::fs::create_dir_all(data_dir).map_err(AccountError::Input)?;
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|_| StoreError::Closed)??;
    let r = run_cli(&store, cmd).await;
    store.close().await;
    r
}

async fn run_cli(store: &Store, cmd: UserCommand) -> Result<String, AccountError> {
    const ACTOR: &str = "cli";
    Ok(match cmd {
        UserCommand::Add { username, role } => {
            let role = parse_role(&role)?;
            let name = check_username(&username)?;
            let pw = tokio::task::block_in_place(|| {
                read_password(&format!("Password for {name}: "), true)
            })?;
            let u = create_user(store, ACTOR, &name, role, &pw).await?;
            // Whoever typed this password here knows it: the person must choose their own
            // at the first login. A scanner never logs in, so it is not asked.
            if u.role.is_person() {
                let id = u.id;
                let n2 = u.username.clone();
                store
                    .write(move |t| {
                        users::set_must_change_password(t, id, true)?;
                        audit::append(
                            t,
                            ACTOR,
                            "user.must_change_password",
                            Some(&format!("user:{n2}")),
                            serde_json::json!({"username": n2}),
                        )
                    })
                    .await?;
            }
            format!(
                "created {} ({}){}",
                u.username,
                u.role.as_str(),
                if u.role.is_person() {
                    "; they choose a new password at their first login"
                } else {
                    ""
                }
            )
        }
        UserCommand::Passwd { username } => {
            let user = find_user(store, &username).await?;
            let pw = tokio::task::block_in_place(|| {
                read_password(&format!("New password for {}: ", user.username), true)
            })?;
            set_password(store, ACTOR, &user.username, &pw).await?;
            format!(
                "password of {} changed; their sessions have ended",
                user.username
            )
        }
        UserCommand::Disable { username } => {
            set_disabled(store, ACTOR, &username, true).await?;
            format!("{username} disabled; their sessions and API tokens have ended")
        }
        UserCommand::Enable { username } => {
            set_disabled(store, ACTOR, &username, false).await?;
            format!("{username} enabled")
        }
        UserCommand::Role { username, role } => {
            let role = parse_role(&role)?;
            set_role(store, ACTOR, &username, role).await?;
            format!("{username} is now {}", role.as_str())
        }
        UserCommand::Token {
            username,
            label,
            expires_days,
        } => {
            let t = create_token(store, ACTOR, &username, &label, expires_days).await?;
            format!(
                "{}\n(API token {} for {username}, {}; shown once: send it as `Authorization: Bearer <token>`)",
                t.token,
                t.id,
                t.expires_at
                    .map(|e| format!("expires {e}"))
                    .unwrap_or_else(|| "no expiry".into())
            )
        }
        UserCommand::Tokens { username } => {
            let user = find_user(store, &username).await?;
            let list = store
                .read(move |c| users::list_tokens(c, Some(user.id)))
                .await?;
            let mut out = format!(
                "{:<12} {:<8} {:<24} {:<24} {:<24} label\n",
                "id", "state", "created", "expires", "revoked"
            );
            for t in list {
                out.push_str(&format!(
                    "{:<12} {:<8} {:<24} {:<24} {:<24} {}\n",
                    t.id,
                    t.state,
                    t.created_at,
                    t.expires_at.as_deref().unwrap_or("never"),
                    t.revoked_at.as_deref().unwrap_or("-"),
                    t.label
                ));
            }
            out.trim_end().to_string()
        }
        UserCommand::RevokeToken { id } => {
            let owner = revoke_token(store, ACTOR, &id, None).await?;
            format!("API token {} of {owner} revoked", id.trim())
        }
        UserCommand::List => {
            let list = store.read(users::list).await?;
            let mut out = format!("{:<24} {:<11} {:<9} last login\n", "user", "role", "state");
            for u in list {
                out.push_str(&format!(
                    "{:<24} {:<11} {:<9} {}\n",
                    u.username,
                    u.role.as_str(),
                    if u.disabled { "disabled" } else { "enabled" },
                    u.last_login_at.as_deref().unwrap_or("never")
                ));
            }
            out.trim_end().to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords() {
        assert_eq!(check_username(" Alice.K ").unwrap(), "alice.k");
        for bad in [
            "a",
            "1abc",
            "auto",
            "System",
            "al ice",
            "al/ice",
            &"x".repeat(33),
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
        assert!(check_password("short", "bob").is_err());
        assert!(check_password("bob-is-great-1", "bob").is_err());
        assert!(check_password("aaaaaaaaaaaa", "bob").is_err());
        assert!(check_password("correct horse", "bob").is_ok());
    }

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn account_changes_are_audited_and_the_last_admin_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).unwrap();
        create_user(&store, "cli", "root", Role::Admin, "correct horse")
            .await
            .unwrap();
        assert!(matches!(
            create_user(&store, "cli", "ROOT", Role::Operator, "correct horse").await,
            Err(AccountError::Exists(_))
        ));
        assert!(matches!(
            set_disabled(&store, "cli", "root", true).await,
            Err(AccountError::LastAdmin(_))
        ));
        assert!(matches!(
            set_role(&store, "cli", "root", Role::Operator).await,
            Err(AccountError::LastAdmin(_))
        ));
        let tok = create_token(&store, "cli", "root", "ci", None)
            .await
            .unwrap()
            .token;
        assert!(tok.starts_with("riac_"));
        let h = secret_hash(&tok);
        assert!(store
            .read(move |c| users::token(c, &h))
            .await
            .unwrap()
            .is_some());
        let trail = store
            .read(|c| audit::for_subject(c, "user:root"))
            .await
            .unwrap();
        let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["user.created", "user.token_created"]);
        assert!(
            !trail.iter().any(|e| e.detail.to_string().contains(&tok)),
            "the token value is never stored"
        );
    }
}
