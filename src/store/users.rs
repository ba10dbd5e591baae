//! Operator accounts, their login sessions and API tokens, as rows. This module is SQL only:
//! it stores password hashes it is given (argon2id PHC strings made by `web::accounts`) and
//! the SHA-256 of session and API token values, never a password or a token itself. Every
//! change that matters to an auditor is appended to the audit chain in the same transaction
//! by the caller.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{now_rfc3339, Result};

/// What an account may do. The order of the first three is a hierarchy (a supervisor may do
/// all an operator may); `Scanner` is a machine account that may only upload scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Scanner,
    Operator,
    Supervisor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Operator, Role::Supervisor, Role::Admin, Role::Scanner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scanner => "scanner",
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "scanner" => Some(Role::Scanner),
            "operator" => Some(Role::Operator),
            "supervisor" => Some(Role::Supervisor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// True for the roles that use the operator UI (everything but `scanner`).
    pub fn is_person(self) -> bool {
        self >= Role::Operator
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
    pub last_login_at: Option<String>,
}

const USER_COLUMNS: &str =
    "id, username, role, disabled, created_at, updated_at, last_login_at, password_hash";

fn row_to_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<(User, String)> {
    let role: String = r.get(2)?;
    Ok((
        User {
            id: r.get(0)?,
            username: r.get(1)?,
            // An unknown role in the table (a newer binary wrote it) gets the least power.
            role: Role::parse(&role).unwrap_or(Role::Scanner),
            disabled: r.get(3)?,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            last_login_at: r.get(6)?,
        },
        r.get(7)?,
    ))
}

/// The user and their password hash, by name (case-insensitive).
pub fn find(c: &Connection, username: &str) -> Result<Option<(User, String)>> {
    Ok(c.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
        [username],
        row_to_user,
    )
    .optional()?)
}

pub fn list(c: &Connection) -> Result<Vec<User>> {
    let mut st = c.prepare(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY username"
    ))?;
    let rows = st
        .query_map([], row_to_user)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().map(|(u, _)| u).collect())
}

pub fn count(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

/// Inserts a user. Fails with a UNIQUE constraint error when the name is taken (callers
/// check first to give a clear message).
pub fn insert(t: &Transaction<'_>, username: &str, role: Role, password_hash: &str) -> Result<i64> {
    let now = now_rfc3339();
    t.execute(
        "INSERT INTO users(username, role, password_hash, disabled, created_at, updated_at) VALUES (?1,?2,?3,0,?4,?4)",
        params![username, role.as_str(), password_hash, now],
    )?;
    Ok(t.last_insert_rowid())
}

/// Replaces the password hash, ends the user's sessions and revokes their API tokens (a
/// changed or reset password must lock out whoever knew the old one, and a token may have
/// been made by them). `must_change` makes the next login change it first. Returns false
/// when there is no such user.
pub fn set_password(
    t: &Transaction<'_>,
    user_id: i64,
    password_hash: &str,
    must_change: bool,
) -> Result<bool> {
    let now = now_rfc3339();
    let n = t.execute(
        "UPDATE users SET password_hash = ?2, updated_at = ?3, must_change_password = ?4 WHERE id = ?1",
        params![user_id, password_hash, now, must_change],
    )?;
    delete_sessions_of(t, user_id)?;
    revoke_tokens_of(t, user_id, &now)?;
    Ok(n == 1)
}

/// Whether the account must change its password before it may do anything else.
pub fn must_change_password(c: &Connection, user_id: i64) -> Result<bool> {
    Ok(c.query_row(
        "SELECT must_change_password FROM users WHERE id = ?1",
        [user_id],
        |r| r.get(0),
    )
    .optional()?
    .unwrap_or(false))
}

/// Marks an account as having to change its password at its next login (`user add`).
pub fn set_must_change_password(t: &Transaction<'_>, user_id: i64, v: bool) -> Result<()> {
    t.execute(
        "UPDATE users SET must_change_password = ?2 WHERE id = ?1",
        params![user_id, v],
    )?;
    Ok(())
}

fn revoke_tokens_of(t: &Transaction<'_>, user_id: i64, now: &str) -> Result<usize> {
    Ok(t.execute(
        "UPDATE api_tokens SET revoked = 1, revoked_at = ?2 WHERE user_id = ?1 AND revoked = 0",
        params![user_id, now],
    )?)
}

/// Disables or re-enables an account; disabling ends its sessions and revokes its tokens.
pub fn set_disabled(t: &Transaction<'_>, user_id: i64, disabled: bool) -> Result<bool> {
    let n = t.execute(
        "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1",
        params![user_id, disabled, now_rfc3339()],
    )?;
    if disabled {
        delete_sessions_of(t, user_id)?;
        revoke_tokens_of(t, user_id, &now_rfc3339())?;
    }
    Ok(n == 1)
}

/// Changes the role; the user's sessions end so that the new role applies at once.
pub fn set_role(t: &Transaction<'_>, user_id: i64, role: Role) -> Result<bool> {
    let n = t.execute(
        "UPDATE users SET role = ?2, updated_at = ?3 WHERE id = ?1",
        params![user_id, role.as_str(), now_rfc3339()],
    )?;
    delete_sessions_of(t, user_id)?;
    Ok(n == 1)
}

/// Number of enabled admins: the last one may not be disabled or demoted.
pub fn enabled_admins(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        "SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0",
        [],
        |r| r.get(0),
    )?)
}

fn delete_sessions_of(t: &Transaction<'_>, user_id: i64) -> Result<()> {
    t.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
    Ok(())
}

/// Who a valid session or token belongs to.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    /// The session's CSRF token; `None` for API tokens (not sent by browsers on their own,
    /// so not exposed to cross-site request forgery).
    pub csrf_token: Option<String>,
    /// The account must change its password before anything else (sessions only).
    pub must_change_password: bool,
    /// When the session was last used (sessions only), to refresh it at most once a minute.
    pub last_seen_at: Option<String>,
}

/// Stores a new session (by the hash of its cookie value) and records the login time.
/// Expired sessions are swept here, so the table stays as small as the number of shifts.
pub fn create_session(
    t: &Transaction<'_>,
    token_hash: &str,
    user_id: i64,
    csrf_token: &str,
    expires_at: &str,
    client: &str,
) -> Result<()> {
    let now = now_rfc3339();
    t.execute("DELETE FROM sessions WHERE expires_at <= ?1", [&now])?;
    t.execute(
        "INSERT INTO sessions(token_hash, user_id, csrf_token, created_at, expires_at, client) VALUES (?1,?2,?3,?4,?5,?6)",
        params![token_hash, user_id, csrf_token, now, expires_at, client],
    )?;
    t.execute(
        "UPDATE users SET last_login_at = ?2 WHERE id = ?1",
        params![user_id, now],
    )?;
    Ok(())
}

/// The principal of a session of an enabled user that has not expired and was last used
/// after `idle_cutoff` (RFC 3339, as stored).
pub fn session(c: &Connection, token_hash: &str, idle_cutoff: &str) -> Result<Option<Principal>> {
    Ok(c.query_row(
        "SELECT u.id, u.username, u.role, s.csrf_token, u.must_change_password,
                coalesce(s.last_seen_at, s.created_at)
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.disabled = 0
           AND coalesce(s.last_seen_at, s.created_at) > ?3",
        params![token_hash, now_rfc3339(), idle_cutoff],
        |r| {
            let role: String = r.get(2)?;
            Ok(Principal {
                user_id: r.get(0)?,
                username: r.get(1)?,
                role: Role::parse(&role).unwrap_or(Role::Scanner),
                csrf_token: Some(r.get(3)?),
                must_change_password: r.get(4)?,
                last_seen_at: Some(r.get(5)?),
            })
        },
    )
    .optional()?)
}

/// Records that a session was used now (its idle timeout starts again).
pub fn touch_session(t: &Transaction<'_>, token_hash: &str) -> Result<()> {
    t.execute(
        "UPDATE sessions SET last_seen_at = ?2 WHERE token_hash = ?1",
        params![token_hash, now_rfc3339()],
    )?;
    Ok(())
}

pub fn delete_session(t: &Transaction<'_>, token_hash: &str) -> Result<()> {
    t.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
    Ok(())
}

/// The public id of a token: the first 12 hex digits of the SHA-256 of its value. It names
/// the token in lists and for revocation and gives nothing away about the value.
pub const TOKEN_ID_LEN: usize = 12;

pub fn insert_token(
    t: &Transaction<'_>,
    token_hash: &str,
    user_id: i64,
    label: &str,
    expires_at: Option<&str>,
) -> Result<()> {
    t.execute(
        "INSERT INTO api_tokens(token_hash, user_id, label, created_at, revoked, expires_at) VALUES (?1,?2,?3,?4,0,?5)",
        params![token_hash, user_id, label, now_rfc3339(), expires_at],
    )?;
    Ok(())
}

/// The principal of an unrevoked, unexpired API token of an enabled user.
pub fn token(c: &Connection, token_hash: &str) -> Result<Option<Principal>> {
    Ok(c.query_row(
        "SELECT u.id, u.username, u.role FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = ?1 AND t.revoked = 0 AND u.disabled = 0
           AND (t.expires_at IS NULL OR t.expires_at > ?2)",
        params![token_hash, now_rfc3339()],
        |r| {
            let role: String = r.get(2)?;
            Ok(Principal {
                user_id: r.get(0)?,
                username: r.get(1)?,
                role: Role::parse(&role).unwrap_or(Role::Scanner),
                csrf_token: None,
                must_change_password: false,
                last_seen_at: None,
            })
        },
    )
    .optional()?)
}

/// An API token as lists show it: never its value or full hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub username: String,
    pub label: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

/// The tokens of one user (`Some(id)`) or of everyone, newest first.
pub fn list_tokens(c: &Connection, user_id: Option<i64>) -> Result<Vec<TokenInfo>> {
    let now = now_rfc3339();
    let mut st = c.prepare(
        "SELECT substr(t.token_hash, 1, 12), u.username, t.label, t.created_at, t.expires_at,
                t.revoked, t.revoked_at
         FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE ?1 IS NULL OR t.user_id = ?1
         ORDER BY t.created_at DESC",
    )?;
    let rows = st
        .query_map([user_id], |r| {
            let expires_at: Option<String> = r.get(4)?;
            let revoked: bool = r.get(5)?;
            Ok(TokenInfo {
                id: r.get(0)?,
                username: r.get(1)?,
                label: r.get(2)?,
                created_at: r.get(3)?,
                state: if revoked {
                    "revoked"
                } else if expires_at.as_deref().is_some_and(|e| e <= now.as_str()) {
                    "expired"
                } else {
                    "active"
                },
                expires_at,
                revoked_at: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Revokes the token with public id `id` (of `user_id` when given). Returns the owner's
/// name, or `None` when no unrevoked token has that id.
pub fn revoke_token(t: &Transaction<'_>, id: &str, user_id: Option<i64>) -> Result<Option<String>> {
    let owner: Option<(String, String)> = t
        .query_row(
            "SELECT t.token_hash, u.username FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE substr(t.token_hash, 1, 12) = ?1 AND t.revoked = 0
               AND (?2 IS NULL OR t.user_id = ?2)",
            params![id, user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((hash, username)) = owner else {
        return Ok(None);
    };
    t.execute(
        "UPDATE api_tokens SET revoked = 1, revoked_at = ?2 WHERE token_hash = ?1",
        params![hash, now_rfc3339()],
    )?;
    Ok(Some(username))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn sessions_end_with_password_change_and_disable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("u.db")).unwrap();
        let id = store
            .write(|t| {
                let id = insert(t, "alice", Role::Operator, "h1")?;
                create_session(t, "s1", id, "c1", "2999-01-01T00:00:00.000Z", "test")?;
                create_session(t, "s2", id, "c2", "2000-01-01T00:00:00.000Z", "test")?;
                insert_token(t, "t1", id, "ci", None)?;
                Ok(id)
            })
            .await
            .unwrap();
        let p = store
            .read(|c| session(c, "s1", "2001-01-01T00:00:00.000Z"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((p.username.as_str(), p.role), ("alice", Role::Operator));
        assert_eq!(p.csrf_token.as_deref(), Some("c1"));
        assert!(
            store
                .read(|c| session(c, "s2", "2001-01-01T00:00:00.000Z"))
                .await
                .unwrap()
                .is_none(),
            "expired"
        );
        assert!(store.read(|c| token(c, "t1")).await.unwrap().is_some());
        // Names are case-insensitive: ALICE is alice.
        assert!(store.read(|c| find(c, "ALICE")).await.unwrap().is_some());

        store
            .write(move |t| {
                insert_token(t, "t2", id, "ci", None)?;
                insert_token(t, "t3", id, "old", Some("2000-01-01T00:00:00.000Z"))?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            store.read(|c| token(c, "t3")).await.unwrap().is_none(),
            "expired"
        );
        let listed = store.read(|c| list_tokens(c, None)).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().any(|t| t.state == "expired"));
        store
            .write(move |t| set_password(t, id, "h2", false))
            .await
            .unwrap();
        assert!(store
            .read(|c| session(c, "s1", "2001-01-01T00:00:00.000Z"))
            .await
            .unwrap()
            .is_none());
        assert!(
            store.read(|c| token(c, "t1")).await.unwrap().is_none(),
            "a changed password revokes the user's tokens"
        );
        store
            .write(move |t| insert_token(t, "t4", id, "new", None))
            .await
            .unwrap();
        let id4: String = "t4".chars().take(TOKEN_ID_LEN).collect();
        let who = store
            .write(move |t| revoke_token(t, &id4, None))
            .await
            .unwrap();
        assert_eq!(who.as_deref(), Some("alice"));
        assert!(store.read(|c| token(c, "t4")).await.unwrap().is_none());
        store
            .write(move |t| insert_token(t, "t1b", id, "ci", None))
            .await
            .unwrap();
        assert!(store.read(|c| token(c, "t1b")).await.unwrap().is_some());
        store
            .write(move |t| set_disabled(t, id, true))
            .await
            .unwrap();
        assert!(store.read(|c| token(c, "t1b")).await.unwrap().is_none());
        store
            .write(move |t| set_disabled(t, id, false))
            .await
            .unwrap();
        assert!(
            store.read(|c| token(c, "t1b")).await.unwrap().is_none(),
            "re-enabling does not revive revoked tokens"
        );
    }
}
