//! The status page and `GET /api/v1/status`: what an operator or field engineer checks when
//! something seems wrong — intake rate, review backlog, outbox depth and the age of its
//! oldest message, disk space, the model in use, TLS, recent rejects with their reasons —
//! and the node-wide audit trail for supervisors. The uplink's own state comes from
//! `GET /api/v1/uplink` (connection, acknowledgements, quota, entry packages, commands).

use std::path::Path;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use maud::{html, Markup};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::CurrentUser;
use super::pages::{chrome, layout, pretty, when};
use super::{AppError, AppState};
use crate::store::users::Role;
use crate::store::{self, format_ts, queue};

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_percent: f64,
}

/// Space on the file system holding `path` (statvfs); `None` if it cannot be read.
pub fn disk_usage(path: &Path) -> Option<Disk> {
    let crate::fsx::Space { free, total } = crate::fsx::space(path).ok()?;
    Some(Disk {
        path: path.display().to_string(),
        total_bytes: total,
        free_bytes: free,
        used_percent: if total > 0 {
            100.0 * (total - free) as f64 / total as f64
        } else {
            0.0
        },
    })
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn age_of(ts: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some((time::OffsetDateTime::now_utc() - t).whole_seconds().max(0))
}

async fn collect(st: &AppState) -> Result<Value, AppError> {
    let now = time::OffsetDateTime::now_utc();
    let (hour, day) = (
        format_ts(now - time::Duration::hours(1)),
        format_ts(now - time::Duration::days(1)),
    );
    let (figures, rejects) = st
        .store
        .read(move |c| {
            Ok((
                queue::status_figures(c, &hour, &day)?,
                store::scans::recent_rejects(c, 20)?,
            ))
        })
        .await?;
    let dir = st.cfg.data_dir.clone();
    let disk = tokio::task::spawn_blocking(move || disk_usage(&dir))
        .await
        .ok()
        .flatten();
    let oldest_age = figures.outbox_oldest.as_deref().and_then(age_of);
    // Which scanner pairs the transit check judges on their own calibration (the rest on
    // the uncalibrated defaults, whose false-alarm rate is unknown).
    let calibration = st.transit.as_ref().map(|t| {
        t.calibration()
            .pairs()
            .map(|p| {
                json!({
                    "pair": p.key(),
                    "refer_od_m2": p.refer_od_m2,
                    "alert_od_m2": p.alert_od_m2,
                    "target_false_alarm_rate": p.target_false_alarm_rate,
                    "pairs_used": p.pairs_used,
                    "cleared_pairs": p.cleared.len(),
                    "calibrated_at": p.calibrated_at,
                    "refined_at": p.refined.as_ref().map(|r| &r.refined_at),
                    "source": p.source,
                })
            })
            .collect::<Vec<_>>()
    });
    Ok(json!({
        "node": {
            "node_id": st.cfg.node_id,
            "site_id": st.cfg.site_id,
            "version": env!("CARGO_PKG_VERSION"),
        },
        "figures": figures,
        "outbox": {
            "depth": figures.outbox_depth,
            "oldest_created_at": figures.outbox_oldest,
            "oldest_age_secs": oldest_age,
        },
        "disk": disk,
        "retention": st.retention.status(),
        "tls": {
            "on": st.tls_on(),
            "certificate_sha256": st.tls_fingerprint,
        },
        "rejects": rejects,
        "transit_calibration": calibration,
    }))
}

/// `GET /api/v1/status`.
pub async fn api(State(st): State<AppState>) -> Result<Json<Value>, AppError> {
    Ok(Json(collect(&st).await?))
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    verify: Option<String>,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// `GET /status`.
pub async fn page(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Query(q): Query<StatusQuery>,
) -> Result<Markup, AppError> {
    let s = collect(&st).await?;
    let verify = if q.verify.is_some() && me.role >= Role::Supervisor {
        Some(st.store.read(store::audit::verify).await?)
    } else {
        None
    };
    let c = chrome(&st, &me, "status").await;
    let unsigned_commands =
        st.cfg.uplink.broker.is_some() && st.cfg.uplink.centre_public_key.is_none();
    let f = &s["figures"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let body = html! {
        h1 { "Node status" }
        div.status-grid {
            div.panel {
                h2 { "Node" }
                table.kv {
                    tr { th { "Node / site" } td.mono { (st.cfg.node_id) " / " (st.cfg.site_id) } }
                    tr { th { "Version" } td { (env!("CARGO_PKG_VERSION")) } }
                    tr { th { "Web" } td {
                        @if st.tls_on() { "HTTPS" } @else { "HTTP (loopback only)" }
                        @if let Some(fp) = &st.tls_fingerprint { br; small.mono.muted title="SHA-256 of the certificate: compare it with what your browser shows" { (fp) } }
                    } }
                    tr { th { "Model" } td {
                        @if let Some(m) = s["figures"]["model"].as_object() {
                            (m.get("name").and_then(Value::as_str).unwrap_or("?")) " " (m.get("version").and_then(Value::as_str).unwrap_or(""))
                        } @else { span.muted { "no embedding model named by any verdict yet" } }
                    } }
                    tr { th { "Reference library" } td #library-version.muted { "not reported by this build" } }
                }
            }
            div.panel {
                h2 { "Intake" }
                table.kv {
                    tr { th { "Scans, last hour" } td #ingest-hour { (n(&f["scans_last_hour"])) } }
                    tr { th { "Scans, last 24 h" } td { (n(&f["scans_last_day"])) } }
                    tr { th { "Last scan received" } td { @if let Some(t) = f["last_scan_at"].as_str() { (when(t)) } @else { "never" } } }
                    tr { th { "Rejected, last 24 h" } td class=[(n(&f["rejects_last_day"]) > 0).then_some("warn")] { (n(&f["rejects_last_day"])) } }
                    tr { th { "Waiting for a verdict" } td { (n(&f["undecided"])) } }
                    tr { th { "Needing review" } td class=[(n(&f["needs_review"]) > 0).then_some("warn")] { a href="/?review=needed" { (n(&f["needs_review"])) } } }
                    tr { th { "Operator decisions, 24 h" } td { (n(&f["operator_decisions_last_day"])) } }
                    tr { th { "Scans stored" } td { (n(&f["scans_total"])) } }
                }
            }
            div.panel {
                h2 { "Uplink to the central RIAC" }
                @if unsigned_commands {
                    p.warn #unsigned-commands role="alert" {
                        "Commands from the centre are accepted unsigned (uplink.allow_unsigned_commands = true): anyone who can publish on this node's command topic can change its thresholds, add library references and pull scan images. Set uplink.centre_public_key to the centre's key."
                    }
                }
                table.kv {
                    tr { th { "Outbox depth" } td #outbox-depth { (n(&s["outbox"]["depth"])) " message(s)" } }
                    tr { th { "Oldest unsent" } td #outbox-oldest {
                        @match s["outbox"]["oldest_age_secs"].as_i64() {
                            Some(a) => { (ago(a)) " old" }
                            None => { "—" }
                        }
                    } }
                }
                div #uplink data-src="/api/v1/uplink" { p.muted { "Asking the uplink…" } }
            }
            div.panel {
                h2 { "Storage" }
                @if let Some(d) = s["disk"].as_object() {
                    @let pct = d.get("used_percent").and_then(Value::as_f64).unwrap_or(0.0);
                    table.kv {
                        tr { th { "Data dir" } td.mono { (d.get("path").and_then(Value::as_str).unwrap_or("")) } }
                        tr { th { "Free" } td class=[(pct > 90.0).then_some("warn")] {
                            (gib(d.get("free_bytes").and_then(Value::as_u64).unwrap_or(0))) " of "
                            (gib(d.get("total_bytes").and_then(Value::as_u64).unwrap_or(0)))
                            " (" (format!("{pct:.0}")) "% used)"
                        } }
                        @let r = &s["retention"];
                        @if r["disk_full"].as_bool() == Some(true) {
                            tr { th { "Intake" } td.warn #disk-full { "PAUSED: free space is below retention.min_free_gb and nothing more may be evicted; drops wait in the hot folder" } }
                        }
                        tr { th { "Scan images kept" } td #retention-used {
                            (gib(r["used_bytes"].as_u64().unwrap_or(0)))
                            @if let Some(m) = r["max_bytes"].as_u64() { " of " (gib(m)) " (retention.max_gb)" }
                            ", " (gib(r["evictable_bytes"].as_u64().unwrap_or(0))) " evictable, "
                            (r["pinned_scans"].as_u64().unwrap_or(0)) " scan(s) pinned"
                        } }
                        tr { th { "Next eviction" } td #retention-next {
                            @if let Some(c) = r["next_candidate"].as_object() {
                                a.mono href=(format!("/scans/{}", c.get("scan_id").and_then(Value::as_str).unwrap_or(""))) { (c.get("scan_id").and_then(Value::as_str).unwrap_or("")) }
                                @if let Some(t) = c.get("ages_out_at").and_then(Value::as_str) { " (ages out " (t) ")" } @else { " (when a limit is reached)" }
                            } @else { span.muted { "nothing evictable" } }
                        } }
                        tr { th { "Last eviction" } td { @if let Some(t) = r["last_eviction_at"].as_str() { (when(t)) } @else { "none since start" } } }
                    }
                    div.meter title=(format!("{pct:.0}% used")) { span data-pct=(format!("{pct:.0}")) {} }
                } @else {
                    p.muted { "Disk figures are not available." }
                }
            }
        }
        @if let Some(pairs) = s["transit_calibration"].as_array() {
            div.panel #transit-calibration {
                h2 { "Transit calibration (scanner pairs)" }
                @if pairs.is_empty() {
                    p.warn { "No scanner pair is calibrated: every transit verdict uses the uncalibrated default thresholds, whose false-alarm rate on your scanners is unknown. See docs/COMMISSIONING.md (riac-node calibrate transit), or the centre may push one." }
                } @else {
                    table {
                        thead { tr { th { "Entry → exit scanner" } th { "Refer at (OD·m²)" } th { "Alert at (OD·m²)" } th { "Target false alarms" } th { "Clean pairs (+ cleared by supervisors)" } th { "Calibrated (UTC)" } th { "Last refined (UTC)" } th { "By" } } }
                        tbody { @for p in pairs { tr {
                            td.mono { (p["pair"].as_str().unwrap_or("")) }
                            td { (format!("{:.3}", p["refer_od_m2"].as_f64().unwrap_or(0.0))) }
                            td { (format!("{:.3}", p["alert_od_m2"].as_f64().unwrap_or(0.0))) }
                            td { (format!("{:.1}%", 100.0 * p["target_false_alarm_rate"].as_f64().unwrap_or(0.0))) }
                            td { (p["pairs_used"].as_u64().unwrap_or(0)) " + " (p["cleared_pairs"].as_u64().unwrap_or(0)) }
                            td { (when(p["calibrated_at"].as_str().unwrap_or(""))) }
                            td { (p["refined_at"].as_str().map(when).unwrap_or_default()) }
                            td { (p["source"].as_str().unwrap_or("")) }
                        } } }
                    }
                    p.muted { "Pairs not listed are judged on the uncalibrated defaults; their verdicts say so." }
                }
            }
        }
        div.panel {
            h2 { "Recent rejects" }
            @if let Some(rs) = s["rejects"].as_array().filter(|r| !r.is_empty()) {
                table #rejects {
                    thead { tr { th { "When (UTC)" } th { "Scan" } th { "Source" } th { "Field" } th { "Reason" } } }
                    tbody { @for r in rs { tr {
                        td { (when(r["at"].as_str().unwrap_or(""))) }
                        td.mono { (r["scan_id"].as_str().unwrap_or("—")) }
                        td { (r["source"].as_str().unwrap_or("")) }
                        td.mono { (r["field"].as_str().unwrap_or("")) }
                        td { (r["reason"].as_str().unwrap_or("")) }
                    } } }
                }
            } @else { p.muted { "No rejected drops." } }
        }
        @if me.role >= Role::Supervisor {
            div.panel {
                h2 { "Audit chain" }
                @match verify {
                    None => { p { a.button href="/status?verify=1" { "Verify the audit chain" } " walks every entry and checks its hash link." } }
                    Some(None) => { p #audit-ok.good-text { "Every audit entry's hash and link verified." } }
                    Some(Some(seq)) => { p.error { "The audit chain is broken at entry " (seq) ": an entry was altered or removed. Preserve this node's disk and report it." } }
                }
            }
        }
        details { summary { "Raw status (JSON)" } (pretty(&s)) }
    };
    Ok(layout("Status", &c, body))
}

/// `GET /audit`: the newest 300 audit entries, for supervisors.
pub async fn audit_page(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
) -> Result<Markup, AppError> {
    let entries = st.store.read(|c| queue::recent_audit(c, 300)).await?;
    let c = chrome(&st, &me, "audit").await;
    let body = html! {
        h1 { "Audit trail" }
        p.muted { "Every login, decision, account change, ingest and reject, newest first. Each entry hashes the one before it; " a href="/status?verify=1" { "verify the chain" } "." }
        table.audit {
            thead { tr { th { "#" } th { "When (UTC)" } th { "Who" } th { "What" } th { "Subject" } th { "Detail" } } }
            tbody { @for e in &entries { tr {
                td { (e.seq) } td { (when(&e.at)) } td { (e.actor) } td.mono { (e.action) }
                td.mono { @if let Some(sub) = &e.subject {
                    @if crate::scan::is_valid_scan_id(sub) { a href=(format!("/scans/{sub}")) { (sub) } } @else { (sub) }
                } }
                td.detail { (e.detail.to_string()) }
            } } }
        }
    };
    Ok(layout("Audit", &c, body))
}
