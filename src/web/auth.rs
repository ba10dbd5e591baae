//! Who may call what. One middleware in front of every route: it decides the access a
//! request needs from its method and path ([`policy`]; routes nobody listed need at least
//! an operator, and unlisted writes an admin), authenticates it by session cookie or API
//! token, checks the role, and checks the CSRF token of every state-changing request that
//! came with a cookie. Also the login and logout handlers, with login rate limiting and the
//! audit line of every attempt. It never logs a password, cookie or token value.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::accounts::{self, new_secret, secret_hash};
use super::{pages, AppError, AppState};
use crate::config::WebConfig;
use crate::store::users::{self, Principal, Role};
use crate::store::{audit, format_ts};

pub const SESSION_COOKIE: &str = "riac_session";
const LOGIN_COOKIE: &str = "riac_login";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FIELD: &str = "csrf";

/// The authenticated caller, put into the request's extensions for handlers.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub username: String,
    pub role: Role,
    /// The session's CSRF token, for forms and scripts; `None` for API-token callers.
    pub csrf: Option<String>,
}

impl CurrentUser {
    pub fn csrf(&self) -> &str {
        self.csrf.as_deref().unwrap_or("")
    }
}

/// The access a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, metrics, login, static assets.
    Public,
    /// Any logged-in account (logout, own password).
    Account,
    /// The operator UI and read API: operator, supervisor, admin.
    View,
    /// Recording a decision: operator and up (the handler also stops an operator from
    /// overriding another person's decision, which needs a supervisor).
    Decide,
    /// Supervision (the node-wide audit trail): supervisor, admin.
    Supervise,
    /// Scan upload: scanner accounts and admins.
    Upload,
    /// Accounts and node administration.
    Admin,
}

/// The access each route needs. Deny by default: a route that is not listed needs `View`
/// for reads and `Admin` for writes, so a route added without thinking about access is
/// never open.
pub fn policy(method: &Method, path: &str) -> Access {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match path {
        "/healthz" | "/metrics" | "/login" | "/favicon.ico" => return Access::Public,
        "/logout" | "/account" => return Access::Account,
        "/audit" => return Access::Supervise,
        "/api/v1/scans" if *method == Method::POST => return Access::Upload,
        "/exports" | "/api/v1/exports" if *method == Method::POST => return Access::Supervise,
        _ => {}
    }
    if path.starts_with("/static/") {
        return Access::Public;
    }
    if path.starts_with("/admin") || path.starts_with("/api/v1/users") {
        return Access::Admin;
    }
    if !read
        && path.starts_with("/scans/")
        && path.ends_with("/decision")
        && path.matches('/').count() == 3
    {
        return Access::Decide;
    }
    if *method == Method::POST
        && path.starts_with("/api/v1/scans/")
        && path.ends_with("/decisions")
        && path.matches('/').count() == 5
    {
        return Access::Decide;
    }
    if read {
        Access::View
    } else {
        Access::Admin
    }
}

fn allowed(access: Access, role: Role) -> bool {
    match access {
        Access::Public | Access::Account => true,
        Access::View | Access::Decide => role.is_person(),
        Access::Supervise => role >= Role::Supervisor,
        Access::Upload => matches!(role, Role::Scanner | Role::Admin),
        Access::Admin => role == Role::Admin,
    }
}

/// Compares secrets without leaking through timing how much of them matched.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The client's address as the server saw it (tests without a socket get "local").
pub fn client_of(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".into())
}

fn wants_html(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    *method == Method::GET
        && !path.starts_with("/api/")
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|a| a.contains("text/html") || a.contains("*/*"))
}

/// The middleware: authenticate, authorise, check CSRF, then call the route. A browser
/// asking for a page gets refusals and errors as an HTML page, API clients as JSON.
pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let html = !req.uri().path().starts_with("/api/")
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    let resp = guard(st, req, next).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(html && is_json && (resp.status().is_client_error() || resp.status().is_server_error())) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let msg = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("the request failed");
    let msg = match v.pointer("/error/field").and_then(|f| f.as_str()) {
        Some(f) => format!("{f}: {msg}"),
        None => msg.to_string(),
    };
    let mut page = pages::error_page(parts.status, &msg);
    for name in [header::RETRY_AFTER, header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            page.headers_mut().insert(name, v.clone());
        }
    }
    page
}

async fn guard(st: AppState, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let access = policy(req.method(), &path);
    if access == Access::Public {
        return next.run(req).await;
    }
    let principal = match authenticate(&st, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let Some(principal) = principal else {
        if wants_html(req.method(), &path, req.headers()) {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            return Redirect::to(&format!("/login?next={}", urlencode(target))).into_response();
        }
        return AppError::Unauthorized(
            "log in first (session cookie or `Authorization: Bearer <token>`)".into(),
        )
        .into_response();
    };
    if !allowed(access, principal.role) {
        return AppError::Forbidden(format!(
            "your role ({}) may not do this; it needs {}",
            principal.role.as_str(),
            match access {
                Access::Upload => "a scanner or admin account",
                Access::Admin => "an admin",
                Access::Supervise => "a supervisor or admin",
                _ => "an operator, supervisor or admin",
            }
        ))
        .into_response();
    }
    let mut req = req;
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        if let Some(expected) = principal.csrf_token.clone() {
            match check_csrf(req, &expected).await {
                Ok(r) => req = r,
                Err(resp) => return *resp,
            }
        }
    }
    req.extensions_mut().insert(CurrentUser {
        username: principal.username,
        role: principal.role,
        csrf: principal.csrf_token,
    });
    let mut resp = next.run(req).await;
    // Pages show who is logged in and carry CSRF tokens: never cache them.
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, AppError> {
    if let Some(token) = bearer(headers) {
        let h = secret_hash(token);
        return Ok(st.store.read(move |c| users::token(c, &h)).await?);
    }
    if let Some(cookie) = cookie(headers, SESSION_COOKIE) {
        let h = secret_hash(cookie);
        return Ok(st.store.read(move |c| users::session(c, &h)).await?);
    }
    Ok(None)
}

const MAX_FORM: usize = 64 * 1024;

/// Accepts the request when its `X-CSRF-Token` header, or the `csrf` field of its
/// urlencoded form body, equals the session's token; hands the request back intact.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, Box<Response>> {
    let refuse = || {
        Box::new(
            AppError::Forbidden(
                "missing or wrong CSRF token: reload the page and try again".into(),
            )
            .into_response(),
        )
    };
    if let Some(h) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if same_secret(h, expected) {
            Ok(req)
        } else {
            Err(refuse())
        };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refuse());
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
        Box::new(AppError::PayloadTooLarge("form is larger than 64 KiB".into()).into_response())
    })?;
    // The token is hex, so it needs no percent-decoding to compare.
    let found = bytes
        .split(|&b| b == b'&')
        .filter_map(|kv| {
            let mut it = kv.splitn(2, |&b| b == b'=');
            Some((it.next()?, it.next()?))
        })
        .find(|(k, _)| *k == CSRF_FIELD.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .is_some_and(|v| same_secret(v, expected));
    if found {
        Ok(Request::from_parts(parts, Body::from(bytes)))
    } else {
        Err(refuse())
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Only a local path may be a login's destination (no open redirect to another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// Failed logins per client address and per user name in a sliding window.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(cfg: &WebConfig) -> Self {
        LoginLimiter {
            max: cfg.login_max_failures,
            window: cfg.login_window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until the next attempt is allowed, if any key is over its limit.
    pub fn blocked(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter lock");
        let mut wait = None;
        for k in keys {
            if let Some(q) = map.get_mut(k) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    q.pop_front();
                }
                if q.len() as u32 >= self.max {
                    let oldest = *q.front().expect("non-empty");
                    let secs = (self.window - now.duration_since(oldest)).as_secs() + 1;
                    wait = Some(wait.map_or(secs, |w: u64| w.max(secs)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("limiter lock");
        // A flood of made-up names must not grow the map without bound.
        if map.len() > 10_000 {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        for k in keys {
            let q = map.entry(k.clone()).or_default();
            q.push_back(now);
            while q.len() > self.max as usize {
                q.pop_front();
            }
        }
    }

    pub fn succeeded(&self, user_key: &str) {
        self.failures.lock().expect("limiter lock").remove(user_key);
    }
}

/// Shared login machinery.
pub struct AuthState {
    pub limiter: LoginLimiter,
    /// argon2 takes ~20 MiB and tens of ms per check: bound how many run at once.
    pub hashing: Semaphore,
}

impl AuthState {
    pub fn new(cfg: &WebConfig) -> Self {
        AuthState {
            limiter: LoginLimiter::new(cfg),
            hashing: Semaphore::new(2),
        }
    }
}

fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
    secure: bool,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(State(st): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let token = new_secret();
    let next = safe_next(q.next.as_deref());
    let mut resp = pages::login(&token, &next, None).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, "/login", Some(3600), st.tls_on()),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

fn login_failed(status: StatusCode, token: &str, next: &str, message: &str) -> Response {
    let mut r = (status, pages::login(token, next, Some(message))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /login`: checks the form's token against the login cookie (login CSRF), the rate
/// limits, then the password; audits the attempt either way.
pub async fn login(
    State(st): State<AppState>,
    ConnectInfoOpt(client): ConnectInfoOpt,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    let next = safe_next(f.next.as_deref());
    let login_token = cookie(&headers, LOGIN_COOKIE).unwrap_or("").to_string();
    if login_token.is_empty() || !same_secret(&login_token, &f.csrf) {
        return Err(AppError::Forbidden(
            "the login form expired or came from another site: reload the login page".into(),
        ));
    }
    let name = f.username.trim().to_ascii_lowercase();
    let keys = [format!("ip:{client}"), format!("user:{name}")];
    if let Some(wait) = st.auth.limiter.blocked(&keys) {
        let mut r = login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            &login_token,
            &next,
            &format!("Too many failed logins. Try again in {wait} s."),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return Ok(r);
    }
    let n2 = name.clone();
    let found = if name.is_empty() || name.len() > 64 {
        None
    } else {
        st.store.read(move |c| users::find(c, &n2)).await?
    };
    let (user, phc) = match &found {
        Some((u, h)) if !u.disabled => (Some(u.clone()), h.clone()),
        _ => (None, accounts::dummy_hash().to_string()),
    };
    let ok = {
        let _permit = st
            .auth
            .hashing
            .acquire()
            .await
            .map_err(|_| AppError::Unavailable("the node is shutting down".into()))?;
        let pw = f.password;
        tokio::task::spawn_blocking(move || accounts::verify_password(&pw, &phc))
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
    };
    let user = match user {
        Some(u) if ok => u,
        _ => {
            st.auth.limiter.failed(&keys);
            let shown: String = name.chars().take(64).collect();
            let why = match &found {
                None => "unknown user",
                Some((u, _)) if u.disabled => "account disabled",
                _ => "wrong password",
            };
            let client2 = client.clone();
            st.store
                .write(move |t| {
                    audit::append(
                        t,
                        &shown,
                        "login.failed",
                        Some(&format!("user:{shown}")),
                        serde_json::json!({"client": client2, "reason": why}),
                    )
                })
                .await?;
            tracing::info!(user = %name, client = %client, reason = why, "login failed");
            return Ok(login_failed(
                StatusCode::UNAUTHORIZED,
                &login_token,
                &next,
                "Wrong user name or password (or the account is disabled).",
            ));
        }
    };
    if !user.role.is_person() {
        return Ok(login_failed(
            StatusCode::FORBIDDEN,
            &login_token,
            &next,
            "This is a scanner account: it uploads scans with an API token and cannot use the operator UI.",
        ));
    }
    st.auth.limiter.succeeded(&keys[1]);
    let session = new_secret();
    let csrf = new_secret();
    let expires = format_ts(time::OffsetDateTime::now_utc() + st.cfg.web.session_lifetime);
    let (h, uid, uname, client2) = (
        secret_hash(&session),
        user.id,
        user.username.clone(),
        client.clone(),
    );
    st.store
        .write(move |t| {
            users::create_session(t, &h, uid, &csrf, &expires, &client2)?;
            audit::append(
                t,
                &uname,
                "login",
                Some(&format!("user:{uname}")),
                serde_json::json!({"client": client2}),
            )?;
            Ok(())
        })
        .await?;
    tracing::info!(user = %user.username, client = %client, "login");
    let mut r = Redirect::to(&next).into_response();
    let secure = st.tls_on();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            &session,
            "/",
            Some(st.cfg.web.session_lifetime.as_secs()),
            secure,
        ),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", "/login", Some(0), secure),
    );
    Ok(r)
}

/// `POST /logout` (CSRF-checked by the middleware): ends the session.
pub async fn logout(
    State(st): State<AppState>,
    axum::Extension(me): axum::Extension<CurrentUser>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let Some(c) = cookie(&headers, SESSION_COOKIE) {
        let h = secret_hash(c);
        let name = me.username.clone();
        st.store
            .write(move |t| {
                users::delete_session(t, &h)?;
                audit::append(
                    t,
                    &name,
                    "logout",
                    Some(&format!("user:{name}")),
                    serde_json::json!({}),
                )?;
                Ok(())
            })
            .await?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", Some(0), st.tls_on()),
    );
    Ok(r)
}

/// The client address when the server recorded it, else "local" (oneshot tests).
pub struct ConnectInfoOpt(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ConnectInfoOpt(client_of(&parts.extensions)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_denies_by_default() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(policy(&get, "/healthz"), Access::Public);
        assert_eq!(policy(&get, "/static/app.js"), Access::Public);
        assert_eq!(policy(&get, "/"), Access::View);
        assert_eq!(policy(&get, "/api/v1/some/new/route"), Access::View);
        assert_eq!(policy(&post, "/api/v1/some/new/route"), Access::Admin);
        assert_eq!(policy(&post, "/api/v1/scans"), Access::Upload);
        assert_eq!(policy(&get, "/api/v1/scans"), Access::View);
        assert_eq!(policy(&post, "/scans/X-1/decision"), Access::Decide);
        assert_eq!(policy(&post, "/scans/X-1/other/decision"), Access::Admin);
        assert_eq!(policy(&post, "/api/v1/scans/X-1/decisions"), Access::Decide);
        assert_eq!(policy(&post, "/api/v1/scans/X-1/pin"), Access::Admin);
        assert_eq!(policy(&get, "/admin/users"), Access::Admin);
        assert_eq!(policy(&Method::DELETE, "/api/v1/users/x"), Access::Admin);
        assert!(!allowed(Access::View, Role::Scanner));
        assert!(allowed(Access::Upload, Role::Scanner));
        assert!(!allowed(Access::Upload, Role::Operator));
        assert!(!allowed(Access::Admin, Role::Supervisor));
    }

    #[test]
    fn limiter_blocks_after_max_failures_in_window() {
        let cfg = WebConfig {
            tls: None,
            session_lifetime: Duration::from_secs(60),
            login_max_failures: 3,
            login_window: Duration::from_secs(60),
        };
        let l = LoginLimiter::new(&cfg);
        let keys = ["ip:1".to_string(), "user:bob".to_string()];
        for _ in 0..3 {
            assert_eq!(l.blocked(&keys), None);
            l.failed(&keys);
        }
        let wait = l.blocked(&keys).unwrap();
        assert!((1..=61).contains(&wait), "{wait}");
        // Another user from the same address is blocked too (the address is over).
        assert!(l.blocked(&["ip:1".into(), "user:eve".into()]).is_some());
        assert!(l.blocked(&["ip:2".into(), "user:eve".into()]).is_none());
    }

    #[test]
    fn next_must_be_local() {
        assert_eq!(safe_next(Some("/scans/A?x=1")), "/scans/A?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
