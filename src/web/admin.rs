//! Account administration pages: the admin's user list (add, disable and enable, change
//! role, reset password, issue, list and revoke API tokens) and every user's own password
//! change. All changes go through `web::accounts`, which writes them with their audit
//! lines.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;

use super::accounts::{self, AccountError};
use super::auth::{CurrentUser, CSRF_FIELD};
use super::pages::{chrome, layout, when};
use super::{AppError, AppState};
use crate::store::users::{self, Role};

impl From<AccountError> for AppError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::InvalidUsername(_) => AppError::bad("username", e.to_string()),
            AccountError::WeakPassword(_) | AccountError::Mismatch => {
                AppError::bad("password", e.to_string())
            }
            AccountError::InvalidRole(_) => AppError::bad("role", e.to_string()),
            AccountError::Exists(_) | AccountError::LastAdmin(_) => {
                AppError::Conflict(e.to_string())
            }
            AccountError::NoSuchUser(_) | AccountError::NoSuchToken(_) => {
                AppError::NotFound(e.to_string())
            }
            AccountError::Store(s) => s.into(),
            other => AppError::Internal(other.to_string()),
        }
    }
}

/// What the users page says after an action. The redirect carries a code and the user
/// name, never text: a link with `?done=<any text>` must not put words in the node's mouth.
#[derive(Debug, Default, Deserialize)]
pub struct Done {
    done: Option<String>,
    user: Option<String>,
}

impl Done {
    fn message(&self) -> Option<String> {
        // Only a name that could be an account is shown; anything else is dropped.
        let who = self
            .user
            .as_deref()
            .and_then(|u| accounts::check_username(u).ok())?;
        Some(match self.done.as_deref()? {
            "created" => format!("Created {who}."),
            "disabled" => format!("Disabled {who}; their sessions and API tokens have ended."),
            "enabled" => format!("Enabled {who}."),
            "role" => format!("Changed the role of {who}; their sessions have ended."),
            "password" => {
                format!("Password of {who} reset; their sessions and API tokens have ended.")
            }
            "revoked" => format!("Revoked an API token of {who}."),
            _ => return None,
        })
    }
}

fn role_select(name: &str, selected: Option<Role>) -> Markup {
    html! {
        select name=(name) aria-label="role" {
            @for r in Role::ALL {
                option value=(r.as_str()) selected[selected == Some(r)] { (r.as_str()) }
            }
        }
    }
}

/// `GET /admin/users`.
pub async fn users_page(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Query(d): Query<Done>,
) -> Result<Markup, AppError> {
    let list = st.store.read(users::list).await?;
    // Every active token, and the 20 newest that ended (revoked or expired): the page
    // manages what still works; `riac-node user tokens NAME` has the full history.
    let tokens: Vec<users::TokenInfo> = {
        let all = st.store.read(|c| users::list_tokens(c, None)).await?;
        let (active, ended): (Vec<_>, Vec<_>) = all.into_iter().partition(|t| t.state == "active");
        active
            .into_iter()
            .chain(ended.into_iter().take(20))
            .collect()
    };
    let c = chrome(&st, &me, "users").await;
    let csrf = me.csrf().to_string();
    let hidden = |action: &str| {
        html! {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            input type="hidden" name="action" value=(action);
        }
    };
    let body = html! {
        h1 { "Users" }
        @if let Some(m) = d.message() { p.flash role="status" { (m) } }
        p.muted {
            "Roles: " strong { "operator" } " reviews scans and decides over automatic verdicts; "
            strong { "supervisor" } " also overrides other people's decisions and reads the audit trail; "
            strong { "admin" } " also manages accounts; " strong { "scanner" } " is a machine account that only uploads scans with an API token."
        }
        table #users.users {
            thead { tr { th { "User" } th { "Role" } th { "State" } th { "Last login" } th { "Actions" } } }
            tbody { @for u in &list { tr class=[u.disabled.then_some("disabled")] {
                td.mono { (u.username) }
                td {
                    form.inline method="post" action="/admin/users" {
                        (hidden("role")) input type="hidden" name="username" value=(u.username);
                        (role_select("role", Some(u.role))) button type="submit" { "Set" }
                    }
                }
                td { @if u.disabled { "disabled" } @else { "enabled" } }
                td { @if let Some(t) = &u.last_login_at { (when(t)) } @else { span.muted { "never" } } }
                td.actions {
                    form.inline method="post" action="/admin/users" {
                        (hidden(if u.disabled { "enable" } else { "disable" }))
                        input type="hidden" name="username" value=(u.username);
                        button type="submit" { @if u.disabled { "Enable" } @else { "Disable" } }
                    }
                    form.inline method="post" action="/admin/users" {
                        (hidden("password")) input type="hidden" name="username" value=(u.username);
                        input type="password" name="password" placeholder="new password" autocomplete="new-password" aria-label="new password";
                        button type="submit" { "Reset password" }
                    }
                    form.inline method="post" action="/admin/users" {
                        (hidden("token")) input type="hidden" name="username" value=(u.username);
                        input name="label" placeholder="token label" aria-label="token label";
                        input name="expires_days" type="number" min="1" max="3650" placeholder="days (empty: no expiry)" aria-label="token expiry in days";
                        button type="submit" { "New API token" }
                    }
                }
            } } }
        }
        h2 { "API tokens" }
        @if tokens.is_empty() { p.muted { "No API tokens." } } @else {
            table #tokens.users {
                thead { tr { th { "Id" } th { "User" } th { "Label" } th { "Created" } th { "Expires" } th { "State" } th { "" } } }
                tbody { @for t in &tokens { tr class=[(t.state != "active").then_some("disabled")] {
                    td.mono { (t.id) }
                    td.mono { (t.username) }
                    td { (t.label) }
                    td { (when(&t.created_at)) }
                    td { @if let Some(e) = &t.expires_at { (when(e)) } @else { span.muted { "never" } } }
                    td { (t.state) }
                    td.actions { @if t.state == "active" {
                        form.inline method="post" action="/admin/users" {
                            (hidden("revoke-token"))
                            input type="hidden" name="username" value=(t.username);
                            input type="hidden" name="token_id" value=(t.id);
                            button type="submit" { "Revoke" }
                        }
                    } }
                } } }
            }
        }
        div.panel {
            h2 { "Add a user" }
            form #add-user.stack method="post" action="/admin/users" {
                (hidden("add"))
                label { "User name " input name="username" required pattern="[A-Za-z][A-Za-z0-9._-]{1,31}"; }
                label { "Role " (role_select("role", Some(Role::Operator))) }
                label { "Initial password (at least 10 characters) " input type="password" name="password" required minlength="10" autocomplete="new-password"; }
                button.primary type="submit" { "Add user" }
            }
        }
    };
    Ok(layout("Users", &c, body))
}

#[derive(Debug, Default, Deserialize)]
pub struct UserAction {
    #[serde(default)]
    action: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    expires_days: String,
    #[serde(default)]
    token_id: String,
}

/// `POST /admin/users` (admin only, CSRF-checked by the middleware).
pub async fn users_action(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Form(a): Form<UserAction>,
) -> Result<Response, AppError> {
    let actor = me.username.as_str();
    let name = a.username.trim().to_ascii_lowercase();
    let done = match a.action.as_str() {
        "add" => {
            let role = accounts::parse_role(&a.role)?;
            let u = accounts::create_user(&st.store, actor, &a.username, role, &a.password).await?;
            return Ok(done_redirect("created", &u.username));
        }
        "disable" => {
            if name == me.username {
                return Err(AppError::Conflict(
                    "you cannot disable your own account here; ask another admin".into(),
                ));
            }
            accounts::set_disabled(&st.store, actor, &name, true).await?;
            "disabled"
        }
        "enable" => {
            accounts::set_disabled(&st.store, actor, &name, false).await?;
            "enabled"
        }
        "role" => {
            let role = accounts::parse_role(&a.role)?;
            accounts::set_role(&st.store, actor, &name, role).await?;
            "role"
        }
        "password" => {
            accounts::set_password(&st.store, actor, &name, &a.password).await?;
            "password"
        }
        "revoke-token" => {
            accounts::revoke_token(&st.store, actor, a.token_id.trim(), Some(&name)).await?;
            "revoked"
        }
        "token" => {
            let label = if a.label.trim().is_empty() {
                "api".to_string()
            } else {
                a.label.trim().chars().take(64).collect()
            };
            let expires_days = match a.expires_days.trim() {
                "" => None,
                d => Some(d.parse::<u32>().ok().filter(|d| (1..=3650).contains(d)).ok_or_else(
                    || {
                        AppError::bad(
                            "expires_days",
                            format!("{d:?} is not a number of days between 1 and 3650 (leave it empty for no expiry)"),
                        )
                    },
                )?),
            };
            let made =
                accounts::create_token(&st.store, actor, &name, &label, expires_days).await?;
            let c = chrome(&st, &me, "users").await;
            // Shown once, on this response only (never in a URL, never stored).
            return Ok(layout(
                "API token",
                &c,
                html! {
                    h1 { "New API token for " (name) }
                    div.panel {
                        p { "Copy it now: it is shown once. Send it as " code { "Authorization: Bearer <token>" } "." }
                        p { code #new-token.token { (made.token) } }
                        p { "Token id " code { (made.id) } @if let Some(e) = &made.expires_at { ", expires " (when(e)) } @else { ", no expiry" } "." }
                        p { a href="/admin/users" { "Back to users" } }
                    }
                },
            )
            .into_response());
        }
        other => {
            return Err(AppError::bad(
                "action",
                format!("{other:?} is not one of: add, disable, enable, role, password, token, revoke-token"),
            ))
        }
    };
    Ok(done_redirect(done, &name))
}

fn done_redirect(code: &str, user: &str) -> Response {
    Redirect::to(&format!(
        "/admin/users?done={code}&user={}",
        super::auth::urlencode(user)
    ))
    .into_response()
}

/// `GET /account`: change your own password.
pub async fn account_page(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
) -> Result<Markup, AppError> {
    let c = chrome(&st, &me, "account").await;
    let name = me.username.clone();
    let must_change = st
        .store
        .read(move |c| {
            Ok(match users::find(c, &name)? {
                Some((u, _)) => users::must_change_password(c, u.id)?,
                None => false,
            })
        })
        .await?;
    Ok(layout(
        "Account",
        &c,
        html! {
            h1 { "Your account" }
            @if must_change {
                p.flash role="alert" { "Choose your own password before you go on: the one you logged in with was set by someone else." }
            }
            p { "Logged in as " strong { (me.username) } " (" (me.role.as_str()) ")." }
            div.panel {
                h2 { "Change your password" }
                form.stack method="post" action="/account" {
                    input type="hidden" name=(CSRF_FIELD) value=(me.csrf());
                    label { "Current password " input type="password" name="current" required autocomplete="current-password"; }
                    label { "New password (at least 10 characters) " input type="password" name="new" required minlength="10" autocomplete="new-password"; }
                    label { "Repeat the new password " input type="password" name="repeat" required minlength="10" autocomplete="new-password"; }
                    button.primary type="submit" { "Change password" }
                }
                p.muted { "Changing it logs you out everywhere." }
            }
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct PasswordChange {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    repeat: String,
}

/// `POST /account`.
pub async fn account_password(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Form(p): Form<PasswordChange>,
) -> Result<Response, AppError> {
    if p.new != p.repeat {
        return Err(AccountError::Mismatch.into());
    }
    let name = me.username.clone();
    let phc = st
        .store
        .read(move |c| users::find(c, &name))
        .await?
        .map(|(_, h)| h)
        .ok_or_else(|| AppError::NotFound("your account no longer exists".into()))?;
    let ok = {
        let _permit = st
            .auth
            .hashing
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable("the node is shutting down".into()))?;
        let cur = p.current;
        tokio::task::spawn_blocking(move || accounts::verify_password(&cur, &phc))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
    };
    if !ok {
        return Err(AppError::bad("current", "the current password is wrong"));
    }
    accounts::set_password(&st.store, &me.username, &me.username, &p.new).await?;
    Ok(Redirect::to("/login").into_response())
}
