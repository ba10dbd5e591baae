//! The scan page (16-bit viewer, decision form, manifest view, verdict and audit history)
//! and the transit page (entry vs aligned exit, heatmap, changed regions). Both render from
//! the verdict's JSON rather than its Rust type, so that a field a newer check adds is
//! shown instead of breaking the page, and an absent check reads as a clear sentence.

use axum::extract::{Path, Query, State};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::api::check_id;
use super::auth::{CurrentUser, CSRF_FIELD};
use super::decide::Choice;
use super::pages::{self, chrome, layout, outcome_badge, status_chip, when};
use super::{AppError, AppState};
use crate::store::audit::AuditEntry;
use crate::store::queue::{self, QueueRow};
use crate::store::scans::ScanRecord;
use crate::store::users::Role;
use crate::store::{self, entries};

#[derive(Debug, Default, Deserialize)]
pub struct ScanQuery {
    review: Option<String>,
    decided: Option<String>,
}

struct Loaded {
    scan: ScanRecord,
    row: QueueRow,
    verdict: Option<Value>,
    history: Vec<Value>,
    audit: Vec<AuditEntry>,
    older: Option<String>,
    newer: Option<String>,
}

async fn load(st: &AppState, id: &str, only_review: bool) -> Result<Loaded, AppError> {
    check_id(id)?;
    let id2 = id.to_string();
    let found = st
        .store
        .read(move |c| {
            let Some(scan) = store::scans::get(c, &id2)? else {
                return Ok(None);
            };
            let Some(row) = queue::get(c, &id2)? else {
                return Ok(None);
            };
            let history = store::verdicts::history_for_scan(c, &id2)?;
            let audit = store::audit::for_subject(c, &id2)?;
            let (older, newer) = queue::neighbours(c, scan.id, only_review)?;
            Ok(Some((scan, row, history, audit, older, newer)))
        })
        .await?;
    let (scan, row, history, audit, older, newer) =
        found.ok_or_else(|| AppError::NotFound(format!("scan {id} is not stored on this node")))?;
    let history: Vec<Value> = history
        .iter()
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect();
    Ok(Loaded {
        verdict: history.last().cloned(),
        scan,
        row,
        history,
        audit,
        older,
        newer,
    })
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// May `me` record a decision on a scan whose current verdict is `v`?
fn decision_rights(me: &CurrentUser, v: &Value) -> Result<(), String> {
    let by = s(v, "/decided_by").unwrap_or("auto");
    if by == "auto" || by == me.username || me.role >= Role::Supervisor {
        Ok(())
    } else {
        Err(format!(
            "Decided by {by}. Overriding another person's decision needs a supervisor."
        ))
    }
}

fn viewer(scan: &ScanRecord) -> Markup {
    let id = &scan.scan_id;
    let pixel_mm = scan
        .sidecar
        .as_ref()
        .and_then(|sc| sc.pointer("/image/pixel_mm"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    html! {
        section #viewer.viewer
            data-samples=(format!("/api/v1/scans/{id}/samples"))
            data-width=(scan.width) data-height=(scan.height) data-pixel-mm=(pixel_mm) {
            div.toolbar {
                div.group role="group" aria-label="window presets" {
                    button type="button" data-preset="full" title="full 16-bit range (key 1)" { "Full range" }
                    button type="button" data-preset="organic" title="light materials: organics, textiles, paper (key 2)" { "Organic" }
                    button type="button" data-preset="metal" title="dense materials: metal, stone (key 3)" { "Metal" }
                    button type="button" data-preset="auto" title="2nd–98th percentile of this scan (key 4)" { "Auto" }
                }
                label.range { "Level" input #wl-center type="range" min="0" max="65535" step="1"; output #wl-center-out {} }
                label.range { "Width" input #wl-width type="range" min="1" max="65536" step="1"; output #wl-width-out {} }
                label { input #invert type="checkbox"; " Invert " kbd { "i" } }
                label { "Palette "
                    select #palette {
                        option value="gray" { "Gray" }
                        option value="hot" { "Hot (false colour)" }
                        option value="turbo" { "Rainbow (false colour)" }
                    }
                }
                div.group {
                    button #zoom-fit type="button" title="fit (key 0)" { "Fit" }
                    button #zoom-1 type="button" title="one screen pixel per image pixel (key =)" { "1:1" }
                    button #profile-toggle type="button" aria-pressed="false" title="drag a line on the image to plot attenuation along it (key p)" { "Profile" }
                }
            }
            div #stage.stage {
                canvas #view {}
                div #viewer-status.viewer-status { "Loading the 16-bit samples…" }
            }
            div #readout.readout { "Move over the image: position, 16-bit value and attenuation. Wheel zooms, drag pans, right-drag adjusts level/width." }
            canvas #profile.profile hidden {}
        }
    }
}

fn decision_panel(me: &CurrentUser, scan_id: &str, verdict: Option<&Value>) -> Markup {
    let Some(v) = verdict else {
        return html! { div.panel { h2 { "Decision" } p.muted { "The automatic check is still running; the decision form appears when it has finished." } } };
    };
    html! {
        div.panel.decision {
            h2 { "Decision" }
            @match decision_rights(me, v) {
                Err(why) => { p.muted { (why) } }
                Ok(()) => {
                    form #decision-form method="post" action=(format!("/scans/{scan_id}/decision")) {
                        input type="hidden" name=(CSRF_FIELD) value=(me.csrf());
                        input type="hidden" name="supersedes" value=(s(v, "/verdict_id").unwrap_or(""));
                        div.choices role="radiogroup" aria-label="decision" {
                            @for c in Choice::ALL {
                                label class=(format!("choice c-{}", c.as_str())) {
                                    input type="radio" name="choice" value=(c.as_str()) required;
                                    span { (c.label()) }
                                    small.muted { " → " (c.outcome().as_str()) }
                                }
                            }
                        }
                        label.note { "Note (required: what you saw, why)"
                            textarea #note name="note" required minlength="3" maxlength="2000" rows="3" {}
                        }
                        button.primary type="submit" { "Record decision" }
                    }
                }
            }
        }
    }
}

fn reasons(v: &Value) -> Markup {
    html! {
        @if let Some(rs) = v.get("reasons").and_then(Value::as_array) {
            ul.reasons { @for r in rs { @if let Some(t) = r.as_str() { li { (t) } } } }
        }
    }
}

fn transit_summary(scan: &ScanRecord, v: Option<&Value>) -> Markup {
    let t = v.and_then(|v| v.get("transit")).filter(|t| !t.is_null());
    let is_exit = scan.regime == "transit" && scan.direction == "exit";
    if t.is_none() && !is_exit {
        return html! {};
    }
    html! {
        div.panel {
            h2 { "Transit" }
            @if let Some(t) = t {
                p {
                    (status_chip("transit", s(t, "/status")))
                    @if let Some(score) = t.get("change_score").and_then(Value::as_f64) { " change score " strong { (format!("{score:.3}")) } }
                }
                @if let Some(r) = s(t, "/reason") { p.muted { (r) } }
                @if let Some(n) = t.get("regions").and_then(Value::as_array).map(Vec::len).filter(|n| *n > 0) {
                    p { strong { (n) } " changed region" @if n > 1 { "s" } }
                }
            } @else {
                p.muted { "No transit result on this scan." }
            }
            p { a.button href=(format!("/scans/{}/transit", scan.scan_id)) { "Open transit view" } }
        }
    }
}

fn metadata(scan: &ScanRecord) -> Markup {
    html! {
        div.panel {
            h2 { "Scan" }
            table.kv {
                tr { th { "Scanner" } td { (scan.scanner_id) " at " (scan.site_id) } }
                tr { th { "Scanned" } td { (when(&scan.scanned_at)) } }
                tr { th { "Received" } td { (when(&scan.received_at)) " via " (scan.source) } }
                tr { th { "Direction" } td { (scan.direction) " / " (scan.regime) } }
                tr { th { "Containers" } td.mono { (scan.container_ids.join(", ")) } }
                @if let Some(p) = &scan.vehicle_plate { tr { th { "Vehicle" } td.mono { (p) } } }
                tr { th { "Declaration" } td.mono { (scan.declaration_number) } }
                tr { th { "Image" } td { (scan.width) "×" (scan.height) ", " (scan.source_format) " " (scan.source_bits) "-bit, " (scan.pixel_meaning)
                    @if scan.has_low_energy { ", dual energy" } } }
                tr { th { "Files" } td {
                    a href=(format!("/api/v1/scans/{}/image16.png", scan.scan_id)) download { "16-bit PNG" } " · "
                    a href=(format!("/api/v1/scans/{}", scan.scan_id)) { "JSON" }
                } }
            }
        }
    }
}

/// Evidence export buttons (supervisors and admins): the signed zip for this scan, for
/// its declaration, or for each of its containers, downloaded by the browser.
fn evidence_panel(me: &CurrentUser, scan: &ScanRecord) -> Markup {
    if me.role < Role::Supervisor {
        return html! {};
    }
    let mut choices = vec![("scan", scan.scan_id.clone(), "This scan".to_string())];
    if !scan.declaration_number.is_empty() {
        choices.push((
            "declaration",
            scan.declaration_number.clone(),
            format!("Declaration {}", scan.declaration_number),
        ));
    }
    for c in &scan.container_ids {
        choices.push(("container", c.clone(), format!("Container {c}")));
    }
    html! {
        div.panel #evidence {
            h2 { "Evidence export" }
            p.muted { "A signed zip with the images, sidecars, every verdict with its signature and chain proof, the decisions and the audit lines. Check it offline with " code { "riac-node verify-export" } ". Each export is audited under your name." }
            @for (by, value, label) in &choices {
                form.inline method="post" action="/exports" {
                    input type="hidden" name=(CSRF_FIELD) value=(me.csrf());
                    input type="hidden" name="by" value=(by);
                    input type="hidden" name="value" value=(value);
                    button.button type="submit" { "Export: " (label) }
                }
            }
        }
    }
}

/// HS codes share a heading when their first four digits agree.
fn heading(hs: &str) -> String {
    hs.chars().filter(char::is_ascii_digit).take(4).collect()
}

fn manifest_view(scan: &ScanRecord, v: Option<&Value>) -> Markup {
    let goods: Vec<Value> = scan
        .sidecar
        .as_ref()
        .and_then(|sc| sc.pointer("/declaration/goods"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let m = v.and_then(|v| v.get("manifest")).filter(|m| !m.is_null());
    let matches: Vec<Value> = m
        .and_then(|m| m.get("top_matches"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let declared_headings: Vec<String> = goods
        .iter()
        .filter_map(|g| s(g, "/hs_code"))
        .map(heading)
        .collect();
    let known = [
        "status",
        "declared_hs_codes",
        "top_matches",
        "reason",
        "empty",
        "empty_container",
    ];
    let empty = m.and_then(|m| m.get("empty_container").or_else(|| m.get("empty")));
    html! {
        section #manifest.panel.manifest {
            h2 { "Manifest: declared goods vs nearest references" }
            @if let Some(m) = m {
                p { (status_chip("manifest", s(m, "/status"))) @if let Some(r) = s(m, "/reason") { " " span.muted { (r) } } }
            } @else {
                p.muted { "No manifest result on this verdict." }
            }
            @if let Some(e) = empty {
                @let is_empty = e.as_bool().or_else(|| e.get("empty").and_then(Value::as_bool)).unwrap_or(false);
                p class=(if is_empty { "empty-result flagged" } else { "empty-result" }) {
                    "Empty-container check: " strong { @if is_empty { "the container looks EMPTY" } @else { "cargo present" } }
                    @if let Some(sc) = e.get("score").and_then(Value::as_f64) { " (score " (format!("{sc:.2}")) ")" }
                }
            }
            div.manifest-grid {
                div {
                    h3 { "Declared" }
                    @if goods.is_empty() { p.muted { "The declaration lists no goods." } }
                    @else {
                        table.goods {
                            thead { tr { th { "HS code" } th { "Description" } th { "Packages" } th { "Gross kg" } } }
                            tbody { @for g in &goods { tr {
                                td.mono { (s(g, "/hs_code").unwrap_or("—")) }
                                td { (s(g, "/description").unwrap_or("")) }
                                td { (g.get("packages").map(|x| x.to_string()).unwrap_or_default()) }
                                td { (g.get("gross_kg").map(|x| x.to_string()).unwrap_or_default()) }
                            } } }
                        }
                    }
                }
                div {
                    h3 { "Nearest references" }
                    @if matches.is_empty() {
                        p.muted { "No reference matches" @if let Some(r) = m.and_then(|m| s(m, "/reason")) { ": " (r) } "." }
                    } @else {
                        div.refs {
                            @for mt in &matches {
                                @let hs = s(mt, "/hs_code").unwrap_or("?");
                                @let score = mt.get("score").and_then(Value::as_f64).unwrap_or(0.0);
                                @let agrees = declared_headings.contains(&heading(hs));
                                figure class=(if agrees { "ref agrees" } else { "ref disagrees" }) {
                                    @if let Some(rid) = s(mt, "/reference_id") {
                                        img.ref-thumb loading="lazy" alt=(format!("reference {rid}"))
                                            src=(format!("/api/v1/library/{}/image.png", super::auth::urlencode(rid)));
                                    } @else {
                                        div.ref-thumb.none { "no image" }
                                    }
                                    figcaption {
                                        span.mono { (hs) } " "
                                        @if agrees { span.chip.good { "declared" } } @else { span.chip.bad { "not declared" } }
                                        div.scorebar title=(format!("similarity {score:.3}")) { span data-pct=(format!("{:.0}", (score.clamp(0.0, 1.0) * 100.0))) {} }
                                        small.muted { (format!("{score:.3}")) @if let Some(rid) = s(mt, "/reference_id") { " · " (rid) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(obj) = m.and_then(Value::as_object) {
                @let extra: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| !known.contains(&k.as_str())).collect();
                @if !extra.is_empty() {
                    details { summary { "More from the manifest check" }
                        table.kv { @for (k, x) in extra { tr { th { (k) } td { (match x { Value::String(t) => t.clone(), other => other.to_string() }) } } } }
                    }
                }
            }
        }
    }
}

fn audit_detail(e: &AuditEntry) -> String {
    match e.action.as_str() {
        "verdict.decided" => format!(
            "{} → {}: {}",
            s(&e.detail, "/choice").unwrap_or("?"),
            s(&e.detail, "/outcome").unwrap_or("?"),
            s(&e.detail, "/note").unwrap_or("")
        ),
        _ => match &e.detail {
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| match v {
                    Value::String(t) => format!("{k}: {t}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        },
    }
}

fn history(l: &Loaded) -> Markup {
    html! {
        section #history.panel.history {
            h2 { "History" }
            table.verdicts {
                thead { tr { th { "#" } th { "Decided (UTC)" } th { "By" } th { "Outcome" } th { "Note" } th { "Supersedes" } } }
                tbody {
                    @for v in l.history.iter().rev() {
                        tr class=[(s(v, "/decided_by") != Some("auto")).then_some("by-person")] {
                            td { (v.get("seq").map(|x| x.to_string()).unwrap_or_default()) }
                            td { (when(s(v, "/decided_at").unwrap_or(""))) }
                            td.by { (s(v, "/decided_by").unwrap_or("?")) }
                            td { (outcome_badge(s(v, "/outcome"))) }
                            td.vnote { (s(v, "/note").unwrap_or("")) }
                            td.mono.muted { (s(v, "/supersedes").map(|x| x.get(..8).unwrap_or(x)).unwrap_or("—")) }
                        }
                    }
                    @if l.history.is_empty() { tr { td colspan="6" { "No verdict yet." } } }
                }
            }
            h3 { "Audit trail" }
            table.audit {
                thead { tr { th { "When (UTC)" } th { "Who" } th { "What" } th { "Detail" } } }
                tbody { @for e in &l.audit { tr {
                    td { (when(&e.at)) } td { (e.actor) } td.mono { (e.action) } td { (audit_detail(e)) }
                } } }
            }
        }
    }
}

/// `GET /scans/{id}`.
pub async fn scan(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Path(id): Path<String>,
    Query(q): Query<ScanQuery>,
) -> Result<Markup, AppError> {
    let only_review = q.review.as_deref() == Some("needed");
    let l = load(&st, &id, only_review).await?;
    let c = chrome(&st, &me, "queue").await;
    let nav_q = if only_review { "?review=needed" } else { "" };
    let v = l.verdict.as_ref();
    let body = html! {
        div.scan-head {
            h1 { span.mono { (l.scan.scan_id) } " " (outcome_badge(l.row.outcome.as_deref())) }
            @if l.row.needs_review() {
                span class=(format!("review-pill big o-{}", l.row.outcome.as_deref().unwrap_or(""))) { "NEEDS REVIEW" }
            }
            @if let Some(by) = l.row.decided_by.as_deref().filter(|b| *b != "auto") { span.muted { "decided by " strong { (by) } } }
            nav.scan-nav {
                @if let Some(n) = &l.newer { a #nav-newer href=(format!("/scans/{n}{nav_q}")) title="newer scan (k)" { "← newer" } }
                @if let Some(o) = &l.older { a #nav-older href=(format!("/scans/{o}{nav_q}")) title="older scan (j)" { "older →" } }
                a #nav-review href="/?review=needed" title="queue of scans needing review (r)" { "review queue" }
                a #nav-queue href="/" title="back to the queue (q)" { "queue" }
            }
        }
        @if q.decided.is_some() { p.flash role="status" { "Decision recorded and queued for the central RIAC." } }
        div.scan-grid {
            div.main-col {
                (viewer(&l.scan))
                p.keys.muted {
                    kbd { "1" } "–" kbd { "4" } " presets · " kbd { "i" } " invert · " kbd { "c" } " palette · "
                    kbd { "0" } " fit · " kbd { "=" } " 1:1 · " kbd { "+" } "/" kbd { "-" } " zoom · " kbd { "p" } " profile · "
                    kbd { "j" } "/" kbd { "k" } " older/newer · " kbd { "t" } " transit · " kbd { "q" } " queue"
                }
                (manifest_view(&l.scan, v))
                (history(&l))
            }
            aside.side-col {
                (decision_panel(&me, &l.scan.scan_id, v))
                @if let Some(v) = v {
                    div.panel {
                        h2 { "Verdict " (outcome_badge(s(v, "/outcome"))) }
                        p.muted { "by " (s(v, "/decided_by").unwrap_or("?")) " at " (when(s(v, "/decided_at").unwrap_or(""))) }
                        @if let Some(n) = s(v, "/note") { p.note-shown { "“" (n) "”" } }
                        (reasons(v))
                    }
                }
                (transit_summary(&l.scan, v))
                (metadata(&l.scan))
                (evidence_panel(&me, &l.scan))
            }
        }
    };
    Ok(layout(&l.scan.scan_id, &c, body))
}

/// The entry image's full size, the frame the transit regions are given in.
async fn entry_frame(st: &AppState, entry_id: &str) -> Result<Option<(f64, f64, bool)>, AppError> {
    let e2 = entry_id.to_string();
    let (local, pkg) = st
        .store
        .read(move |c| Ok((store::scans::get(c, &e2)?, entries::get(c, &e2)?)))
        .await?;
    Ok(match (local, pkg) {
        (Some(s), _) => Some((f64::from(s.width), f64::from(s.height), true)),
        (None, Some(p)) => {
            let r = if p.package.reduction > 0.0 {
                p.package.reduction
            } else {
                1.0
            };
            Some((
                f64::from(p.package.image_width) / r,
                f64::from(p.package.image_height) / r,
                false,
            ))
        }
        (None, None) => None,
    })
}

/// `GET /scans/{id}/transit`.
pub async fn transit(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Path(id): Path<String>,
) -> Result<Markup, AppError> {
    let l = load(&st, &id, false).await?;
    let c = chrome(&st, &me, "queue").await;
    let t = l
        .verdict
        .as_ref()
        .and_then(|v| v.get("transit"))
        .filter(|t| !t.is_null())
        .cloned();
    let entry_id = t
        .as_ref()
        .and_then(|t| s(t, "/entry_scan_id"))
        .map(str::to_string);
    let frame = match &entry_id {
        Some(e) if crate::scan::is_valid_scan_id(e) => entry_frame(&st, e).await?,
        _ => None,
    };
    let head = html! {
        div.scan-head {
            h1 { "Transit: " span.mono { (l.scan.scan_id) } " " (outcome_badge(l.row.outcome.as_deref())) }
            nav.scan-nav { a #nav-scan href=(format!("/scans/{id}")) title="back to the scan (Esc)" { "← scan" } a href="/" { "queue" } }
        }
    };
    let Some(t) = t else {
        let is_exit = l.scan.regime == "transit" && l.scan.direction == "exit";
        let transit_reasons: Vec<String> = l
            .verdict
            .as_ref()
            .and_then(|v| v.get("reasons"))
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .filter_map(Value::as_str)
                    .filter(|r| r.contains("transit"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let body = html! {
            (head)
            div #transit-absent.panel.absent {
                h2 { "No transit comparison for this scan" }
                @if is_exit {
                    p { "This is a transit exit scan, but its verdict carries no entry/exit comparison." }
                    @if transit_reasons.is_empty() {
                        p.muted { "The transit check has not produced a result on this node." }
                    } @else {
                        ul.reasons { @for r in &transit_reasons { li { (r) } } }
                    }
                    p { "Review the exit scan on its own, and decide on what it shows." }
                } @else {
                    p { "Only the exit scan of a transit declaration is compared with its entry scan. This scan is "
                        strong { (l.scan.direction) } " under regime " strong { (l.scan.regime) } "." }
                }
                p { a.button href=(format!("/scans/{id}")) { "Back to the scan" } }
            }
        };
        return Ok(layout("Transit", &c, body));
    };
    let regions: Vec<Value> = t
        .get("regions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let status = s(&t, "/status").unwrap_or("unknown").to_string();
    let has_images = matches!(status.as_str(), "changed" | "unchanged" | "inconclusive");
    let data = serde_json::json!({
        "scan_id": id,
        "entry_scan_id": entry_id,
        "status": status,
        "regions": regions,
        "frame": frame.map(|(w, h, _)| [w, h]),
        "entry_src": format!("/api/v1/scans/{id}/transit/entry.png?max_width=2400"),
        "aligned_src": format!("/api/v1/scans/{id}/transit/aligned.png"),
        "heatmap_src": format!("/api/v1/scans/{id}/transit/heatmap.png"),
    });
    let body = html! {
        (head)
        div #transit-result.panel {
            p {
                (status_chip("transit", Some(&status)))
                @if let Some(score) = t.get("change_score").and_then(Value::as_f64) { " change score " strong { (format!("{score:.3}")) } }
                @if let Some(e) = &entry_id {
                    " · entry scan "
                    @if frame.is_some_and(|f| f.2) { a.mono href=(format!("/scans/{e}")) { (e) } } @else { span.mono { (e) } }
                    @if frame.is_some_and(|f| !f.2) { span.muted { " (received from the entry site)" } }
                }
            }
            @if let Some(r) = s(&t, "/reason") { p.muted { (r) } }
        }
        @if has_images {
            section #transit.transit {
                div.toolbar {
                    div.group role="group" aria-label="comparison mode" {
                        button type="button" data-mode="side" aria-pressed="true" title="key 1" { "Side by side" }
                        button type="button" data-mode="overlay" title="key 2" { "Heatmap overlay" }
                        button type="button" data-mode="flicker" title="key 3" { "Flicker" }
                        button type="button" data-mode="swipe" title="key 4" { "Swipe" }
                    }
                    label { input #boxes type="checkbox" checked; " Boxes " kbd { "b" } }
                    label.range.heat-only { "Heatmap" input #heat-opacity type="range" min="0" max="100" value="55"; }
                    label.range.swipe-only { "Swipe" input #swipe type="range" min="0" max="100" value="50"; }
                    span #transit-note.muted {}
                }
                div #transit-stage.transit-stage data-mode="side" {}
                (pages::json_island("transit-data", &data))
            }
        } @else {
            div.panel { p { "No images to compare: " (status.replace('_', " ")) "." } }
        }
        @if !regions.is_empty() {
            section.panel {
                h2 { "Changed regions (entry-image pixels)" }
                table #regions.regions {
                    thead { tr { th { "#" } th { "Box x0,y0 – x1,y1" } th { "Area m²" } th { "Score" } } }
                    tbody { @for (i, r) in regions.iter().enumerate() {
                        tr data-region=(i) {
                            td { (i + 1) }
                            td.mono { (format!("{},{} – {},{}", r["x0"], r["y0"], r["x1"], r["y1"])) }
                            td { (r.get("area_m2").and_then(Value::as_f64).map(|a| format!("{a:.2}")).unwrap_or_else(|| "—".into())) }
                            td { (r.get("score").and_then(Value::as_f64).map(|a| format!("{a:.3}")).unwrap_or_default()) }
                        }
                    } }
                }
            }
        }
    };
    Ok(layout("Transit", &c, body))
}
