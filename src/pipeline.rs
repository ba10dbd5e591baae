//! The per-scan job after ingest: gather what the checks say about a stored scan, decide
//! its verdict and store it with its outbox row in one transaction. Scans arrive by id on a
//! bounded queue; at start, scans stored but never decided (a crash in between) are queued
//! again. The pipeline never waits on the network and never reads the hot folder.
//!
//! Checks that are not available are reported as such in the verdict's `reasons`, with
//! `refer` as the outcome: the node never invents a score.

use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::compare::transit::{self, Transit, TransitCheck};
use crate::metrics::Metrics;
use crate::scan::verdict::{
    ManifestResult, ManifestStatus, Outcome, Verdict, VerdictDeclaration, VERDICT_SCHEMA,
};
use crate::store::scans::ScanRecord;
use crate::store::{self, Store, StoreError};

/// Who this node is, as written into every verdict and topic.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    pub site_id: String,
}

impl NodeIdentity {
    pub fn verdict_topic(&self) -> String {
        format!("riac/v1/{}/{}/verdicts", self.site_id, self.node_id)
    }
}

pub struct Pipeline {
    pub store: Store,
    pub metrics: Metrics,
    pub identity: NodeIdentity,
    pub transit: Transit,
}

impl Pipeline {
    /// Processes scan ids until the queue closes or `token` is cancelled. Undecided scans
    /// left in the store are reloaded by [`requeue_undecided`], not lost.
    pub async fn run(self, mut rx: mpsc::Receiver<String>, token: CancellationToken) {
        loop {
            let scan_id = tokio::select! {
                _ = token.cancelled() => break,
                next = rx.recv() => match next {
                    Some(id) => id,
                    None => break,
                },
            };
            self.metrics.queue_depth(rx.len());
            if let Err(e) = self.process(&scan_id).await {
                match e {
                    StoreError::Closed => break,
                    e => {
                        tracing::error!(scan_id, error = %e, "cannot decide the scan's verdict; it stays undecided and is retried at the next start")
                    }
                }
            }
        }
    }

    async fn process(&self, scan_id: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        let id = scan_id.to_string();
        let Some(scan) = self.store.read(move |c| store::scans::get(c, &id)).await? else {
            tracing::warn!(scan_id, "queued scan is not in the store");
            return Ok(());
        };
        if scan.state == "decided" {
            return Ok(());
        }
        let transit_exit = scan.regime == "transit" && scan.direction == "exit";
        let mut stored = None;
        // An entry that arrives between the pairing and the commit sends us round again.
        for _ in 0..3 {
            let check = if transit_exit {
                Some(self.transit.check_exit(&scan).await?)
            } else {
                None
            };
            let verdict = auto_verdict(&scan, &self.identity, check.as_ref());
            let topic = self.identity.verdict_topic();
            stored = self
                .store
                .write(move |t| transit::store_verdict(t, verdict, &topic))
                .await?;
            if stored.is_some() {
                break;
            }
        }
        let Some(stored) = stored else {
            tracing::warn!(scan_id, "entry scans keep arriving while this exit is paired; it stays undecided until the next start");
            return Ok(());
        };
        if scan.regime == "transit" && scan.direction == "entry" {
            self.transit.notify_entry(&scan.scan_id);
        }
        self.metrics.verdict();
        self.metrics.observe_stage("pipeline", started.elapsed());
        tracing::info!(
            scan_id,
            seq = stored.seq,
            outcome = stored.outcome.as_str(),
            "verdict stored"
        );
        Ok(())
    }
}

/// Queues every stored-but-undecided scan (called once at start, before intake opens).
pub async fn requeue_undecided(
    store: &Store,
    tx: &mpsc::Sender<String>,
) -> Result<usize, StoreError> {
    let ids = store.read(store::scans::undecided).await?;
    let n = ids.len();
    for id in ids {
        if tx.send(id).await.is_err() {
            break;
        }
    }
    Ok(n)
}

/// The whole verdict from the checks' contributions: alert if any check says alert; else
/// refer if any check refers or did not run; else clear.
pub fn combine(contributions: &[Outcome]) -> Outcome {
    if contributions.contains(&Outcome::Alert) {
        Outcome::Alert
    } else if contributions.contains(&Outcome::Refer) {
        Outcome::Refer
    } else {
        Outcome::Clear
    }
}

/// The automatic verdict from the checks this build can run; `transit` is the transit
/// check of a transit exit scan.
pub fn auto_verdict(
    scan: &ScanRecord,
    me: &NodeIdentity,
    transit: Option<&TransitCheck>,
) -> Verdict {
    let declared: Vec<String> = scan
        .sidecar
        .as_ref()
        .and_then(|s| s.pointer("/declaration/goods"))
        .and_then(|g| g.as_array())
        .map(|goods| {
            goods
                .iter()
                .filter_map(|g| {
                    g.get("hs_code")
                        .and_then(|h| h.as_str())
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    let manifest_reason =
        "manifest check not run: no embedding model is loaded on this node".to_string();
    let mut reasons = vec![manifest_reason.clone()];
    // The manifest check did not run: it refers.
    let mut contributions = vec![Outcome::Refer];
    if let Some(t) = transit {
        reasons.extend(t.reasons.iter().cloned());
        contributions.push(t.outcome);
    }
    Verdict {
        schema: VERDICT_SCHEMA.to_string(),
        verdict_id: uuid::Uuid::now_v7().to_string(),
        seq: 0,
        node_id: me.node_id.clone(),
        site_id: me.site_id.clone(),
        scan_id: scan.scan_id.clone(),
        container_ids: scan.container_ids.clone(),
        declaration: VerdictDeclaration {
            number: scan.declaration_number.clone(),
            regime: scan.regime.clone(),
        },
        decided_at: store::now_rfc3339(),
        outcome: combine(&contributions),
        decided_by: "auto".into(),
        reasons,
        manifest: ManifestResult {
            status: ManifestStatus::Unknown,
            declared_hs_codes: declared,
            top_matches: Vec::new(),
            reason: Some(manifest_reason),
        },
        transit: transit.map(|t| t.result.clone()),
        model: None,
        supersedes: None,
        note: None,
        prev_hash: String::new(),
        signature: None,
    }
}
