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
    // An account made with `riac-node user add` has a password someone else typed: until
    // its owner has chosen their own, the session may only change it (or log out).
    if principal.must_change_password && access != Access::Account {
        if wants_html(req.method(), &path, req.headers()) {
            return Redirect::to("/account").into_response();
        }
        return AppError::Forbidden(
            "this account must change its password first: open /account".into(),
        )
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
        let now = time::OffsetDateTime::now_utc();
        let cutoff = format_ts(now - st.cfg.web.session_idle);
        let h2 = h.clone();
        let p = st
            .store
            .read(move |c| users::session(c, &h2, &cutoff))
            .await?;
        // Refresh the idle clock at most once a minute: one write per page view would
        // queue behind the pipeline's writes for nothing.
        let stale = format_ts(now - Duration::from_secs(60));
        if p.as_ref()
            .and_then(|p| p.last_seen_at.as_deref())
            .is_some_and(|seen| seen < stale.as_str())
        {
            st.store.write(move |t| users::touch_session(t, &h)).await?;
        }
        return Ok(p);
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

/// Left as they are in a URL component: RFC 3986's unreserved characters, and `/` (the
/// values are local paths and ids).
const URL_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes `s` (UTF-8) for a URL query value or path segment.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URL_KEEP).to_string()
}

/// Whether `n` may be a login's destination: a local path of plain URL characters only.
/// Anything else could leave the site (`//host`, `/\\host`), be rewritten by a browser
/// into that (a tab or newline is stripped, giving `//host`), or not fit in a header.
fn is_local_path(n: &str) -> bool {
    n.len() <= 2048
        && n.starts_with('/')
        && !n.starts_with("//")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%+,:;@!$*()'".contains(&b))
}

/// Only a local path may be a login's destination (no open redirect to another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if is_local_path(n) => n.into(),
        _ => "/".into(),
    }
}

/// Longest user name a login attempt may carry; longer ones (and any with a control
/// character) are refused before they reach the limiter, the store or the log.
pub const MAX_LOGIN_NAME: usize = 64;

/// Login rate limiting, in three keys per attempt:
/// - (client address, user name): `max` failures in the window, then 429. Guessing one
///   password from one address stops here, and it cannot lock the name for anyone else.
/// - client address alone: `4 * max` failures over all names (password spraying).
/// - user name alone: once it has `max` failures from anywhere, an address that has itself
///   failed on it waits 1, 2, 4 ... s (at most `name_backoff_max`) after the name's last
///   attempt. This slows guessing from many addresses; an address that has not failed on
///   the name is never held back, so the owner logs in from their own desk at once.
///
/// An attempt is counted as a failure *before* its password is checked ([`Self::begin`]),
/// and taken back when the password was right ([`Self::finish`]): attempts sent in
/// parallel see each other, so no more than the limit are ever checked.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    name_backoff_max: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    next_id: u64,
    /// Per key, the (time, attempt id) of failures and of attempts still being checked.
    failures: HashMap<String, VecDeque<(Instant, u64)>>,
}

/// A login attempt counted by [`LoginLimiter::begin`]; hand it to [`LoginLimiter::finish`].
#[derive(Debug)]
pub struct Attempt {
    id: u64,
    pair: String,
    keys: [String; 3],
}

impl LoginLimiter {
    pub fn new(cfg: &WebConfig) -> Self {
        LoginLimiter {
            max: cfg.login_max_failures,
            window: cfg.login_window,
            name_backoff_max: cfg.login_name_backoff_max,
            state: Mutex::new(LimiterState::default()),
        }
    }

    /// Counts an attempt by `client` on `name` as failed until [`Self::finish`] says
    /// otherwise, or refuses it with the seconds to wait.
    pub fn begin(&self, client: &str, name: &str) -> Result<Attempt, u64> {
        let now = Instant::now();
        let (ip, pair, user) = (
            format!("ip:{client}"),
            format!("pair:{client}|{name}"),
            format!("user:{name}"),
        );
        let mut st = self.state.lock().expect("limiter lock");
        // A flood of made-up names must not grow the map without bound.
        if st.failures.len() > 10_000 {
            let window = self.window;
            st.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(t.0) < window));
        }
        let window = self.window;
        let mut recent = |k: &str| -> Option<(usize, Instant, Instant)> {
            let q = st.failures.get_mut(k)?;
            while q.front().is_some_and(|t| now.duration_since(t.0) >= window) {
                q.pop_front();
            }
            Some((q.len(), q.front()?.0, q.back()?.0))
        };
        let until_expired = |oldest: Instant| (window - now.duration_since(oldest)).as_secs() + 1;
        let mut wait: Option<u64> = None;
        let mut hold = |secs: u64| wait = Some(wait.map_or(secs, |w| w.max(secs)));
        let pair_seen = recent(&pair);
        if let Some((n, oldest, _)) = pair_seen {
            if n as u32 >= self.max {
                hold(until_expired(oldest));
            }
        }
        if let Some((n, oldest, _)) = recent(&ip) {
            if n as u32 >= self.max.saturating_mul(4) {
                hold(until_expired(oldest));
            }
        }
        if let (Some((mine, _, _)), Some((n, _, last))) = (pair_seen, recent(&user)) {
            if mine > 0 && n as u32 >= self.max {
                let exp = (n as u32 - self.max).min(20);
                let delay = Duration::from_secs(1 << exp).min(self.name_backoff_max);
                let since = now.duration_since(last);
                if since < delay {
                    hold((delay - since).as_secs_f64().ceil().max(1.0) as u64);
                }
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        st.next_id += 1;
        let id = st.next_id;
        let caps = [
            (ip.clone(), self.max as usize * 4),
            (pair.clone(), self.max as usize),
            (user.clone(), self.max as usize + 24),
        ];
        for (k, cap) in caps {
            let q = st.failures.entry(k).or_default();
            q.push_back((now, id));
            while q.len() > cap.max(1) {
                q.pop_front();
            }
        }
        Ok(Attempt {
            id,
            pair: pair.clone(),
            keys: [ip, pair, user],
        })
    }

    /// Ends an attempt: a wrong password stays counted; a right one is taken back, and
    /// the address's earlier failures on that name are forgotten.
    pub fn finish(&self, attempt: Attempt, succeeded: bool) {
        if !succeeded {
            return;
        }
        let mut st = self.state.lock().expect("limiter lock");
        for k in &attempt.keys {
            if let Some(q) = st.failures.get_mut(k) {
                q.retain(|e| e.1 != attempt.id);
            }
        }
        st.failures.remove(&attempt.pair);
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

/// `POST /login`: checks the destination, the form's token against the login cookie
/// (login CSRF), the user name's shape, the rate limits (counting this attempt before the
/// password is checked), then the password; audits the attempt either way. Every failure
/// to log in, a scanner account's right password included, gets the same answer.
pub async fn login(
    State(st): State<AppState>,
    ConnectInfoOpt(client): ConnectInfoOpt,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, AppError> {
    // First, so that nothing below can answer with an unsafe Location.
    let next = safe_next(f.next.as_deref());
    let login_token = cookie(&headers, LOGIN_COOKIE).unwrap_or("").to_string();
    if login_token.is_empty() || !same_secret(&login_token, &f.csrf) {
        return Err(AppError::Forbidden(
            "the login form expired or came from another site: reload the login page".into(),
        ));
    }
    let name = f.username.trim().to_ascii_lowercase();
    if name.chars().count() > MAX_LOGIN_NAME || name.chars().any(char::is_control) {
        // Never a limiter key or a log line: a megabyte name, or one with a newline
        // forging a log line, goes no further than this.
        tracing::info!(client = %client, name_bytes = name.len(), "login refused: malformed user name");
        return Ok(login_failed(
            StatusCode::BAD_REQUEST,
            &login_token,
            &next,
            "username: a user name is at most 64 characters, with no control characters.",
        ));
    }
    let attempt = match st.auth.limiter.begin(&client, &name) {
        Ok(a) => a,
        Err(wait) => {
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
    };
    let n2 = name.clone();
    let found = if name.is_empty() {
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
    // A scanner account's right password is a failed login like any other: a distinct
    // answer would tell a guesser that the password is right.
    let user = match user {
        Some(u) if ok && u.role.is_person() => u,
        _ => {
            st.auth.limiter.finish(attempt, false);
            let why = match &found {
                None => "unknown user",
                Some((u, _)) if u.disabled => "account disabled",
                Some((u, _)) if ok && !u.role.is_person() => "scanner account at the UI login",
                _ => "wrong password",
            };
            let (shown, client2) = (name.clone(), client.clone());
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
            tracing::info!(user = ?name, client = %client, reason = why, "login failed");
            return Ok(login_failed(
                StatusCode::UNAUTHORIZED,
                &login_token,
                &next,
                "Wrong user name or password (or the account is disabled).",
            ));
        }
    };
    st.auth.limiter.finish(attempt, true);
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
    tracing::info!(user = ?user.username, client = %client, "login");
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
    fn urlencode_keeps_unreserved_and_slashes_and_encodes_the_rest_as_utf8() {
        assert_eq!(urlencode("/scans/KHI-P1_2.x~"), "/scans/KHI-P1_2.x~");
        assert_eq!(urlencode("a b&c=d?e#f"), "a%20b%26c%3Dd%3Fe%23f");
        assert_eq!(urlencode("Nadia Ç"), "Nadia%20%C3%87");
        assert_eq!(urlencode("%2F\n"), "%252F%0A");
    }

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

    fn limiter(max: u32, backoff_max: u64) -> LoginLimiter {
        LoginLimiter::new(&WebConfig {
            tls: None,
            session_lifetime: Duration::from_secs(60),
            session_idle: Duration::from_secs(60),
            login_max_failures: max,
            login_window: Duration::from_secs(60),
            login_name_backoff_max: Duration::from_secs(backoff_max),
        })
    }

    #[test]
    fn limiter_blocks_a_pair_after_max_failures_in_window() {
        let l = limiter(3, 30);
        for _ in 0..3 {
            let a = l.begin("1", "bob").unwrap();
            l.finish(a, false);
        }
        let wait = l.begin("1", "bob").unwrap_err();
        assert!((1..=61).contains(&wait), "{wait}");
        // Another name from that address, and that name from a fresh address, go on.
        assert!(l.begin("1", "eve").is_ok());
        let a = l
            .begin("2", "bob")
            .expect("a fresh address is never held back");
        l.finish(a, true);
    }

    #[test]
    fn attempts_count_before_their_password_is_checked() {
        // Three attempts still being checked fill the pair's limit: a fourth sent at the
        // same time is refused, not checked.
        let l = limiter(3, 30);
        let pending: Vec<Attempt> = (0..3).map(|_| l.begin("1", "bob").unwrap()).collect();
        assert!(l.begin("1", "bob").is_err());
        // A right password takes its attempt back and clears the pair.
        let mut it = pending.into_iter();
        l.finish(it.next().unwrap(), true);
        assert!(l.begin("1", "bob").is_ok());
    }

    #[test]
    fn an_address_spraying_names_is_stopped_and_a_name_under_attack_slows_down() {
        let l = limiter(2, 30);
        for i in 0..8 {
            let a = l.begin("9", &format!("user{i}")).unwrap();
            l.finish(a, false);
        }
        assert!(l.begin("9", "other").is_err(), "4 x max over all names");
        // Many addresses guessing one name: after max failures on the name, an address
        // that failed on it waits; a fresh address does not.
        let l = limiter(2, 30);
        for addr in ["a", "b", "c"] {
            let a = l.begin(addr, "carol").unwrap();
            l.finish(a, false);
        }
        let wait = l.begin("a", "carol").unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        assert!(l.begin("fresh", "carol").is_ok());
    }

    #[test]
    fn next_must_be_local() {
        assert_eq!(safe_next(Some("/scans/A?x=1")), "/scans/A?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        for bad in [
            "/\t/evil.example",
            "/\n",
            "/\x7f",
            "/\0",
            "/\\evil",
            "/ x",
            "/é",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }
}
