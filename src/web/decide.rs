//! Operator decisions. An operator confirms or overrides the automatic verdict with one of
//! three choices and a mandatory note; the decision is a new verdict that names the one it
//! supersedes, joins the node's verdict chain and goes to the outbox
//! (`store::verdicts::insert_with_outbox`), with its audit line, in one transaction.
//!
//! | choice | verdict outcome | meaning |
//! |---|---|---|
//! | `clear` | `clear` | release the cargo |
//! | `inspect` | `refer` | physical inspection of the container |
//! | `escalate` | `alert` | suspected smuggling or tampering: escalate to the RIAC / enforcement |
//!
//! Who may decide: operators decide over automatic verdicts (and may correct their own
//! decision); overriding another person's decision needs a supervisor or admin. A decision
//! names the verdict the operator saw; if another decision landed in between, it is refused
//! (409) rather than silently stacked on top. Evidence (manifest, transit, model) is carried
//! over from the verdict it supersedes: the operator decides, the measurements stay. A
//! supervisor's (or admin's) `clear` of a compared transit exit also refines that scanner
//! pair's calibration ([`crate::compare::transit::Transit::refine_from_clearance`]).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::api::check_id;
use super::auth::CurrentUser;
use super::{AppError, AppState};
use crate::pipeline::NodeIdentity;
use crate::scan::verdict::{Outcome, Verdict};
use crate::store::users::Role;
use crate::store::{self, audit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Clear,
    Inspect,
    Escalate,
}

impl Choice {
    pub const ALL: [Choice; 3] = [Choice::Clear, Choice::Inspect, Choice::Escalate];

    pub fn parse(s: &str) -> Option<Choice> {
        match s {
            "clear" => Some(Choice::Clear),
            "inspect" => Some(Choice::Inspect),
            "escalate" => Some(Choice::Escalate),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Clear => "clear",
            Choice::Inspect => "inspect",
            Choice::Escalate => "escalate",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Choice::Clear => "Clear",
            Choice::Inspect => "Physical inspection",
            Choice::Escalate => "Escalate",
        }
    }
    pub fn outcome(self) -> Outcome {
        match self {
            Choice::Clear => Outcome::Clear,
            Choice::Inspect => Outcome::Refer,
            Choice::Escalate => Outcome::Alert,
        }
    }
}

pub const MAX_NOTE: usize = 2000;

#[derive(Debug, Default, Deserialize)]
pub struct DecisionInput {
    #[serde(default)]
    pub choice: String,
    #[serde(default)]
    pub note: String,
    /// The verdict id the operator was looking at.
    #[serde(default)]
    pub supersedes: Option<String>,
}

enum Refusal {
    NotDecided,
    Stale { by: String, at: String },
    NeedsSupervisor { by: String },
}

/// Checks the input, then stores the decision. Returns the stored verdict.
pub async fn record(
    st: &AppState,
    me: &CurrentUser,
    scan_id: &str,
    input: DecisionInput,
) -> Result<Verdict, AppError> {
    check_id(scan_id)?;
    let choice = Choice::parse(input.choice.trim()).ok_or_else(|| {
        AppError::bad(
            "choice",
            format!(
                "{:?} is not one of: clear, inspect (physical inspection), escalate",
                input.choice
            ),
        )
    })?;
    let note = input.note.trim().to_string();
    if note.chars().count() < 3 {
        return Err(AppError::bad(
            "note",
            "a note is required: say what you saw and why you decide this (at least 3 characters)",
        ));
    }
    if note.chars().count() > MAX_NOTE {
        return Err(AppError::bad(
            "note",
            format!("the note is longer than {MAX_NOTE} characters"),
        ));
    }
    let sid = scan_id.to_string();
    if st
        .store
        .read(move |c| store::scans::get(c, &sid))
        .await?
        .is_none()
    {
        return Err(AppError::NotFound(format!(
            "scan {scan_id} is not stored on this node"
        )));
    }
    let expected = input.supersedes.filter(|s| !s.trim().is_empty());
    let topic = NodeIdentity {
        node_id: st.cfg.node_id.clone(),
        site_id: st.cfg.site_id.clone(),
    }
    .verdict_topic();
    // Operator decisions join the same signed chain as automatic verdicts.
    let signer = st.uplink.signer();
    let (user, role) = (me.username.clone(), me.role);
    let sid = scan_id.to_string();
    let r = st
        .store
        .write(move |t| {
            let Some(current) = store::verdicts::current_for_scan(t, &sid)? else {
                return Ok(Err(Refusal::NotDecided));
            };
            if let Some(exp) = &expected {
                if *exp != current.verdict_id {
                    return Ok(Err(Refusal::Stale {
                        by: current.decided_by,
                        at: current.decided_at,
                    }));
                }
            }
            if current.decided_by != "auto" && current.decided_by != user && role < Role::Supervisor
            {
                return Ok(Err(Refusal::NeedsSupervisor {
                    by: current.decided_by,
                }));
            }
            let mut reasons = vec![format!(
                "operator decision by {user} ({}): {}",
                role.as_str(),
                choice.label().to_lowercase()
            )];
            reasons.extend(
                current
                    .reasons
                    .iter()
                    .filter(|r| !r.starts_with("operator decision by "))
                    .cloned(),
            );
            let v = Verdict {
                verdict_id: uuid::Uuid::now_v7().to_string(),
                seq: 0,
                decided_at: store::now_rfc3339(),
                outcome: choice.outcome(),
                decided_by: user.clone(),
                reasons,
                supersedes: Some(current.verdict_id.clone()),
                note: Some(note.clone()),
                prev_hash: String::new(),
                // An override is a new verdict: written in the current version even when
                // the verdict it supersedes was a /1 from before an upgrade.
                schema: crate::scan::verdict::VERDICT_SCHEMA.into(),
                signing: Some(crate::store::chain::Signing::rfc8785_ed25519()),
                signature: None,
                ..current
            };
            let stored = store::verdicts::insert_with_outbox(t, v, &topic, signer.as_deref())?;
            audit::append(
                t,
                &user,
                "verdict.decided",
                Some(&sid),
                serde_json::json!({
                    "verdict_id": stored.verdict_id,
                    "seq": stored.seq,
                    "supersedes": stored.supersedes,
                    "choice": choice.as_str(),
                    "outcome": stored.outcome.as_str(),
                    "note": note,
                    "role": role.as_str(),
                }),
            )?;
            Ok(Ok(stored))
        })
        .await?;
    match r {
        Ok(v) => {
            tracing::info!(scan_id, user = %me.username, outcome = v.outcome.as_str(), seq = v.seq, "operator decision stored");
            st.metrics.verdict();
            st.uplink.outbox_changed();
            // A supervisor's clearance of a compared transit exit says the pair is clean
            // with the authority to refine that scanner pair's calibration.
            if choice == Choice::Clear && me.role >= Role::Supervisor {
                if let (Some(t), Some(_)) = (&st.transit, &v.transit) {
                    t.refine_from_clearance(scan_id, &me.username).await;
                }
            }
            Ok(v)
        }
        Err(Refusal::NotDecided) => Err(AppError::Conflict(format!(
            "scan {scan_id} has no automatic verdict yet; wait a moment and reload"
        ))),
        Err(Refusal::Stale { by, at }) => Err(AppError::Conflict(format!(
            "scan {scan_id} was decided by {by} at {at} after you opened it: reload the page, read that decision, then decide again"
        ))),
        Err(Refusal::NeedsSupervisor { by }) => Err(AppError::Forbidden(format!(
            "scan {scan_id} was already decided by {by}; overriding another person's decision needs a supervisor"
        ))),
    }
}

/// `POST /scans/{id}/decision` from the scan page's form.
pub async fn form(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Path(id): Path<String>,
    axum::Form(input): axum::Form<DecisionInput>,
) -> Result<Response, AppError> {
    record(&st, &me, &id, input).await?;
    Ok(Redirect::to(&format!("/scans/{id}?decided=1#history")).into_response())
}

/// `POST /api/v1/scans/{id}/decisions` with JSON `{choice, note, supersedes?}`: 201 and
/// the stored verdict.
pub async fn api(
    State(st): State<AppState>,
    Extension(me): Extension<CurrentUser>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, AppError> {
    let input: DecisionInput = serde_json::from_slice(&body).map_err(|e| AppError::BadRequest {
        field: None,
        message: format!("the body must be JSON {{\"choice\", \"note\", \"supersedes\"}}: {e}"),
    })?;
    let v = record(&st, &me, &id, input).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}
