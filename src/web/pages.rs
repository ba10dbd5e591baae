//! Server-rendered operator pages (maud): the page frame, the login page, the review queue
//! (and its rows as a fragment, which the page refetches on every change event), and error
//! pages. Plain HTML; styles and scripts come from `/static/` (embedded in the binary), so
//! the UI works on a site with no internet and under a CSP without inline script.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use super::api::{parse_list_params, ListParams};
use super::assets;
use super::auth::{CurrentUser, CSRF_FIELD};
use super::{AppError, AppState};
use crate::store::queue::{self, QueueFilter, QueueRow, Review};
use crate::store::users::Role;

/// What the frame around every page needs.
pub struct Chrome<'a> {
    pub me: &'a CurrentUser,
    pub needs_review: i64,
    pub active: &'static str,
}

pub async fn chrome<'a>(st: &AppState, me: &'a CurrentUser, active: &'static str) -> Chrome<'a> {
    // The count is decoration: a failed read shows 0 rather than failing the page.
    let needs_review = st.store.read(queue::needs_review_count).await.unwrap_or(0);
    Chrome {
        me,
        needs_review,
        active,
    }
}

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · riac-node" }
        link rel="stylesheet" href=(assets::url("app.css"));
        script src=(assets::url("app.js")) defer {}
        script src=(assets::url("viewer.js")) defer {}
        script src=(assets::url("transit.js")) defer {}
    }
}

pub fn layout(title: &str, c: &Chrome<'_>, body: Markup) -> Markup {
    let nav = |href: &str, key: &str, label: &str| {
        html! { a href=(href) class=[(c.active == key).then_some("active")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                (head(title))
                meta name="csrf-token" content=(c.me.csrf());
            }
            body data-page=(c.active) {
                header.top {
                    a.brand href="/" { "riac-node" }
                    nav {
                        a href="/" class=[(c.active == "queue").then_some("active")] {
                            "Queue"
                            @if c.needs_review > 0 {
                                " " span.count title="scans needing review" { (c.needs_review) }
                            }
                        }
                        (nav("/status", "status", "Status"))
                        @if c.me.role >= Role::Supervisor { (nav("/audit", "audit", "Audit")) }
                        @if c.me.role == Role::Admin { (nav("/admin/users", "users", "Users")) }
                    }
                    div.who {
                        a href="/account" title="your account" { (c.me.username) }
                        " " span.role { (c.me.role.as_str()) }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name=(CSRF_FIELD) value=(c.me.csrf());
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn login(token: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head("Log in")) }
            body.login {
                form.login method="post" action="/login" {
                    h1 { "riac-node" }
                    p.muted { "Cargo X-ray review" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    input type="hidden" name=(CSRF_FIELD) value=(token);
                    input type="hidden" name="next" value=(next);
                    label { "User name" input name="username" autocomplete="username" autofocus required; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

/// A page for a refused or failed request, in place of the JSON error body.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { (head("Error")) }
            body {
                header.top { a.brand href="/" { "riac-node" } }
                main {
                    div.panel.error-page {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p { (message) }
                        p { a href="/" { "Back to the queue" } }
                    }
                }
            }
        }
    };
    (status, body).into_response()
}

pub fn outcome_badge(outcome: Option<&str>) -> Markup {
    match outcome {
        Some(o) => html! { span class=(format!("badge o-{o}")) { (o) } },
        None => html! { span.badge.pending { "deciding…" } },
    }
}

pub fn status_chip(kind: &str, status: Option<&str>) -> Markup {
    match status {
        None => html! {},
        Some(s) => {
            let tone = match s {
                "consistent" | "unchanged" => "good",
                "inconsistent" | "changed" => "bad",
                _ => "neutral",
            };
            html! { span class=(format!("chip {tone}")) title=(kind) { (kind) ": " (s.replace('_', " ")) } }
        }
    }
}

/// "2026-11-28 03:14:02" from the stored RFC 3339 UTC timestamp, with the full value as
/// `data-ts` so the page script can show the age.
pub fn when(ts: &str) -> Markup {
    let short = ts.get(..19).unwrap_or(ts).replace('T', " ");
    html! { time datetime=(ts) data-ts=(ts) { (short) } }
}

#[derive(Debug, Default, Deserialize)]
pub struct QueueParams {
    limit: Option<String>,
    before: Option<String>,
    direction: Option<String>,
    container: Option<String>,
    declaration: Option<String>,
    outcome: Option<String>,
    review: Option<String>,
}

fn parse_queue(p: QueueParams) -> Result<QueueFilter, AppError> {
    let f = parse_list_params(ListParams {
        limit: p.limit,
        before: p.before,
        direction: p.direction,
        container: p.container,
        declaration: p.declaration,
        outcome: p.outcome,
        state: None,
    })?;
    let review = match p.review.as_deref().map(str::trim) {
        None => Review::All,
        Some(r) => Review::parse(r).ok_or_else(|| {
            AppError::bad("review", format!("{r:?} is not one of: all, needed, done"))
        })?,
    };
    Ok(QueueFilter {
        limit: f.limit,
        before: f.before,
        direction: f.direction,
        container: f.container,
        declaration: f.declaration,
        outcome: f.outcome,
        review,
    })
}

fn filter_query(f: &QueueFilter) -> String {
    let mut q = Vec::new();
    let mut add = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", super::auth::urlencode(v)));
        }
    };
    add("direction", f.direction.as_deref());
    add("container", f.container.as_deref());
    add("declaration", f.declaration.as_deref());
    add("outcome", f.outcome.as_deref());
    if f.review != Review::All {
        add("review", Some(f.review.as_str()));
    }
    q.join("&")
}

fn row(r: &QueueRow, qs: &str) -> Markup {
    let review = r.needs_review();
    let href = if qs.is_empty() {
        format!("/scans/{}", r.scan_id)
    } else {
        format!("/scans/{}?{qs}", r.scan_id)
    };
    let mut class = String::from("scan-row");
    if review {
        class.push_str(" needs-review");
    }
    if let Some(o) = &r.outcome {
        class.push_str(&format!(" o-{o}"));
    }
    html! {
        tr class=(class) data-href=(href) data-scan=(r.scan_id) tabindex="-1" {
            td.flag { @if review { span.review-pill { "REVIEW" } } @else if r.outcome.is_none() { span.muted { "…" } } @else { span.done-mark title="reviewed or clear" { "✓" } } }
            td.thumb {
                img loading="lazy" width="160" alt=(format!("scan {}", r.scan_id))
                    src=(format!("/api/v1/scans/{}/image.png?max_width=320", r.scan_id));
            }
            td {
                a.scan-link href=(href) { (r.scan_id) }
                br; small.muted { (r.scanner_id) " · " (r.width) "×" (r.height) }
            }
            td { (when(&r.scanned_at)) }
            td { (r.direction) br; small.muted { (r.regime) } }
            td.mono {
                (r.container_ids.join(" "))
                @if let Some(p) = &r.vehicle_plate { br; small.muted { (p) } }
            }
            td.mono { (r.declaration_number) }
            td {
                (outcome_badge(r.outcome.as_deref()))
                @if let Some(by) = &r.decided_by {
                    br; small.muted { @if by == "auto" { "automatic" } @else { "by " (by) } }
                }
            }
            td.checks {
                (status_chip("transit", r.transit_status.as_deref()))
                (status_chip("manifest", r.manifest_status.as_deref()))
            }
        }
    }
}

fn rows(list: &[QueueRow], f: &QueueFilter) -> Markup {
    let qs = filter_query(f);
    html! {
        @for r in list { (row(r, &qs)) }
        @if list.is_empty() {
            tr.empty { td colspan="9" { "No scans match." } }
        }
    }
}

async fn load_queue(st: &AppState, f: QueueFilter) -> Result<Vec<QueueRow>, AppError> {
    Ok(st.store.read(move |c| queue::list(c, &f)).await?)
}

/// `GET /`: the review queue, newest first, live.
pub async fn index(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Query(p): Query<QueueParams>,
) -> Result<Markup, AppError> {
    let filter = parse_queue(p)?;
    let list = load_queue(&st, filter.clone()).await?;
    let c = chrome(&st, &me, "queue").await;
    let qs = filter_query(&filter);
    let older = (list.len() == filter.limit as usize)
        .then(|| list.last().map(|r| r.id))
        .flatten();
    let body = html! {
        form.filters method="get" action="/" {
            input name="container" placeholder="container id" value=[filter.container.as_deref()] aria-label="container id";
            input name="declaration" placeholder="declaration" value=[filter.declaration.as_deref()] aria-label="declaration";
            select name="outcome" aria-label="outcome" {
                option value="" { "any outcome" }
                @for o in ["clear", "refer", "alert"] {
                    option value=(o) selected[filter.outcome.as_deref() == Some(o)] { (o) }
                }
            }
            select name="direction" aria-label="direction" {
                option value="" { "any direction" }
                @for d in ["entry", "exit", "import", "export"] {
                    option value=(d) selected[filter.direction.as_deref() == Some(d)] { (d) }
                }
            }
            select name="review" aria-label="review" {
                @for (v, l) in [("all", "all scans"), ("needed", "needs review"), ("done", "reviewed")] {
                    option value=(v) selected[filter.review.as_str() == v] { (l) }
                }
            }
            button type="submit" { "Filter" }
            @if !qs.is_empty() { a.clear-filters href="/" { "clear filters" } }
            span #live.live title="updates as scans arrive" { "● live" }
        }
        p.keys.muted {
            kbd { "j" } "/" kbd { "k" } " move · " kbd { "Enter" } " open · "
            kbd { "r" } " next needing review · " kbd { "/" } " search"
        }
        table #queue.queue data-rows=(format!("/queue/rows{}", if qs.is_empty() { String::new() } else { format!("?{qs}") }))
            data-live=[filter.before.is_none().then_some("1")] {
            thead { tr {
                th { span.sr { "review" } } th { "Image" } th { "Scan" } th { "Scanned (UTC)" } th { "Direction" }
                th { "Containers" } th { "Declaration" } th { "Verdict" } th { "Checks" }
            } }
            tbody { (rows(&list, &filter)) }
        }
        @if let Some(b) = older {
            p.pager { a href=(format!("/?{}{}before={b}", qs, if qs.is_empty() { "" } else { "&" })) { "Older scans →" } }
        }
        @if list.is_empty() && qs.is_empty() {
            p.muted { "No scans yet. Drops in " code { (st.cfg.hot_folder.display()) } " appear here." }
        }
    };
    Ok(layout("Queue", &c, body))
}

/// `GET /queue/rows`: the queue's rows alone, for the live refresh.
pub async fn queue_rows(
    State(st): State<AppState>,
    Query(p): Query<QueueParams>,
) -> Result<Markup, AppError> {
    let filter = parse_queue(p)?;
    let list = load_queue(&st, filter.clone()).await?;
    Ok(html! { (rows(&list, &filter)) })
}

/// Pretty JSON for details blocks; never fails a page.
pub fn pretty(v: &serde_json::Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// A literal block of trusted, already-escaped markup (for the JSON island the scripts read).
pub fn json_island(id: &str, v: &serde_json::Value) -> Markup {
    // `</` cannot appear inside the script element's text: escape `<` in the JSON.
    let text = v.to_string().replace('<', "\\u003c");
    html! { script type="application/json" id=(id) { (PreEscaped(text)) } }
}
