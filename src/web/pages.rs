//! Server-rendered operator pages (maud): the scan queue and a scan's page. Plain HTML with
//! a little embedded CSS, no external assets, so the UI works on a site with no internet.

use axum::extract::{Path, Query, State};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::api::{parse_list_params, ListParams};
use super::{AppError, AppState};
use crate::store;

const CSS: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:16px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:6px 8px;border-bottom:1px solid #e3e5ea;text-align:left;vertical-align:top}
th{background:#eceef2;font-weight:600}
img.thumb{width:320px;height:auto;background:#000;display:block}
.o-clear{color:#1a7f37;font-weight:700}.o-refer{color:#9a6700;font-weight:700}.o-alert{color:#cf222e;font-weight:700}
.pending{color:#57606a;font-style:italic}
form.filters{margin-bottom:12px;display:flex;gap:8px;flex-wrap:wrap}
.reasons{margin:0;padding-left:18px;color:#57606a}
pre{background:#fff;padding:12px;overflow:auto;border:1px solid #e3e5ea}
img.full{max-width:100%;background:#000}
"#;

fn layout(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="10"; }
                title { (title) " · riac-node" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header { a href="/" { "riac-node" } span { (title) } }
                main { (body) }
            }
        }
    }
}

fn outcome_cell(outcome: Option<&str>) -> Markup {
    match outcome {
        Some(o) => html! { span class=(format!("o-{o}")) { (o) } },
        None => html! { span class="pending" { "deciding…" } },
    }
}

pub async fn index(
    State(st): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Markup, AppError> {
    let filter = parse_list_params(p)?;
    let f2 = filter.clone();
    let scans = st.store.read(move |c| store::scans::list(c, &f2)).await?;
    let body = html! {
        form class="filters" method="get" action="/" {
            input name="container" placeholder="container id" value=[filter.container.as_deref()];
            input name="declaration" placeholder="declaration" value=[filter.declaration.as_deref()];
            select name="outcome" {
                option value="" { "any outcome" }
                @for o in ["clear", "refer", "alert"] {
                    option value=(o) selected[filter.outcome.as_deref() == Some(o)] { (o) }
                }
            }
            select name="direction" {
                option value="" { "any direction" }
                @for d in ["entry", "exit", "import", "export"] {
                    option value=(d) selected[filter.direction.as_deref() == Some(d)] { (d) }
                }
            }
            button { "Filter" }
        }
        @if scans.is_empty() {
            p { "No scans yet. Drops in " code { (st.cfg.hot_folder.display()) } " appear here." }
        } @else {
            table {
                thead { tr { th { "Image" } th { "Scan" } th { "Outcome" } th { "Direction" } th { "Containers" } th { "Declaration" } th { "Scanned" } } }
                tbody {
                    @for s in &scans {
                        tr {
                            td { a href=(format!("/scans/{}", s.scan_id)) {
                                img class="thumb" loading="lazy" alt=(format!("scan {}", s.scan_id))
                                    src=(format!("/api/v1/scans/{}/image.png?max_width=640", s.scan_id));
                            } }
                            td { a href=(format!("/scans/{}", s.scan_id)) { (s.scan_id) } br; small { (s.scanner_id) " · " (s.width) "×" (s.height) } }
                            td { (outcome_cell(s.outcome.as_deref())) }
                            td { (s.direction) " / " (s.regime) }
                            td { (s.container_ids.join(", ")) }
                            td { (s.declaration_number) }
                            td { (s.scanned_at) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Scans", true, body))
}

pub async fn scan(State(st): State<AppState>, Path(id): Path<String>) -> Result<Markup, AppError> {
    if !crate::scan::is_valid_scan_id(&id) {
        return Err(AppError::bad("scan_id", "not a valid scan id"));
    }
    let id2 = id.clone();
    let (scan, verdict) = st
        .store
        .read(move |c| {
            Ok((
                store::scans::get(c, &id2)?,
                store::verdicts::current_for_scan(c, &id2)?,
            ))
        })
        .await?;
    let scan =
        scan.ok_or_else(|| AppError::NotFound(format!("scan {id} is not stored on this node")))?;
    let body = html! {
        h2 { (scan.scan_id) " " (outcome_cell(verdict.as_ref().map(|v| v.outcome.as_str()))) }
        @if let Some(v) = &verdict {
            ul class="reasons" { @for r in &v.reasons { li { (r) } } }
        }
        p { img class="full" alt=(format!("scan {}", scan.scan_id)) src=(format!("/api/v1/scans/{}/image.png?max_width=2400", scan.scan_id)); }
        table {
            tr { th { "Scanner" } td { (scan.scanner_id) " at " (scan.site_id) } }
            tr { th { "Scanned" } td { (scan.scanned_at) } }
            tr { th { "Received" } td { (scan.received_at) " via " (scan.source) } }
            tr { th { "Direction / regime" } td { (scan.direction) " / " (scan.regime) } }
            tr { th { "Containers" } td { (scan.container_ids.join(", ")) } }
            tr { th { "Declaration" } td { (scan.declaration_number) } }
            tr { th { "Image" } td { (scan.width) "×" (scan.height) ", " (scan.source_format) " " (scan.source_bits) "-bit, " (scan.pixel_meaning) } }
        }
        h3 { "Verdict" }
        pre { (verdict.as_ref().map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_else(|| "not decided yet".into())) }
    };
    Ok(layout(&scan.scan_id, false, body))
}
