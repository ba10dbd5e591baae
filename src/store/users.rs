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

/// Replaces the password hash and ends the user's sessions (a changed password must log
/// out whoever knew the old one). Returns false when there is no such user.
pub fn set_password(t: &Transaction<'_>, user_id: i64, password_hash: &str) -> Result<bool> {
    let n = t.execute(
        "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
        params![user_id, password_hash, now_rfc3339()],
    )?;
    delete_sessions_of(t, user_id)?;
    Ok(n == 1)
}

/// Disables or re-enables an account; disabling ends its sessions and revokes its tokens.
pub fn set_disabled(t: &Transaction<'_>, user_id: i64, disabled: bool) -> Result<bool> {
    let n = t.execute(
        "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1",
        params![user_id, disabled, now_rfc3339()],
    )?;
    if disabled {
        delete_sessions_of(t, user_id)?;
        t.execute(
            "UPDATE api_tokens SET revoked = 1 WHERE user_id = ?1",
            [user_id],
        )?;
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

/// The principal of an unexpired session of an enabled user.
pub fn session(c: &Connection, token_hash: &str) -> Result<Option<Principal>> {
    Ok(c.query_row(
        "SELECT u.id, u.username, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.disabled = 0",
        params![token_hash, now_rfc3339()],
        |r| {
            let role: String = r.get(2)?;
            Ok(Principal {
                user_id: r.get(0)?,
                username: r.get(1)?,
                role: Role::parse(&role).unwrap_or(Role::Scanner),
                csrf_token: Some(r.get(3)?),
            })
        },
    )
    .optional()?)
}

pub fn delete_session(t: &Transaction<'_>, token_hash: &str) -> Result<()> {
    t.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
    Ok(())
}

pub fn insert_token(
    t: &Transaction<'_>,
    token_hash: &str,
    user_id: i64,
    label: &str,
) -> Result<()> {
    t.execute(
        "INSERT INTO api_tokens(token_hash, user_id, label, created_at, revoked) VALUES (?1,?2,?3,?4,0)",
        params![token_hash, user_id, label, now_rfc3339()],
    )?;
    Ok(())
}

/// The principal of an unrevoked API token of an enabled user.
pub fn token(c: &Connection, token_hash: &str) -> Result<Option<Principal>> {
    Ok(c.query_row(
        "SELECT u.id, u.username, u.role FROM api_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = ?1 AND t.revoked = 0 AND u.disabled = 0",
        [token_hash],
        |r| {
            let role: String = r.get(2)?;
            Ok(Principal {
                user_id: r.get(0)?,
                username: r.get(1)?,
                role: Role::parse(&role).unwrap_or(Role::Scanner),
                csrf_token: None,
            })
        },
    )
    .optional()?)
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
                insert_token(t, "t1", id, "ci")?;
                Ok(id)
            })
            .await
            .unwrap();
        let p = store.read(|c| session(c, "s1")).await.unwrap().unwrap();
        assert_eq!((p.username.as_str(), p.role), ("alice", Role::Operator));
        assert_eq!(p.csrf_token.as_deref(), Some("c1"));
        assert!(
            store.read(|c| session(c, "s2")).await.unwrap().is_none(),
            "expired"
        );
        assert!(store.read(|c| token(c, "t1")).await.unwrap().is_some());
        // Names are case-insensitive: ALICE is alice.
        assert!(store.read(|c| find(c, "ALICE")).await.unwrap().is_some());

        store
            .write(move |t| set_password(t, id, "h2"))
            .await
            .unwrap();
        assert!(store.read(|c| session(c, "s1")).await.unwrap().is_none());
        assert!(store.read(|c| token(c, "t1")).await.unwrap().is_some());
        store
            .write(move |t| set_disabled(t, id, true))
            .await
            .unwrap();
        assert!(store.read(|c| token(c, "t1")).await.unwrap().is_none());
        store
            .write(move |t| set_disabled(t, id, false))
            .await
            .unwrap();
        assert!(
            store.read(|c| token(c, "t1")).await.unwrap().is_none(),
            "re-enabling does not revive revoked tokens"
        );
    }
}
