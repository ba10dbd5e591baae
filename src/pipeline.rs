//! The per-scan job after ingest: gather what the checks say about a stored scan, decide
//! its verdict and store it with its outbox row in one transaction. Scans arrive by id on a
//! bounded queue; at start, scans stored but never decided (a crash in between) are queued
//! again. The pipeline never waits on the network and never reads the hot folder.
//!
//! Checks that are not available are reported as such in the verdict's `reasons`, with
//! `refer` as the outcome: the node never invents a score.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::compare::transit::{self, Transit, TransitCheck};
use crate::matching::{Contribution, Matcher};
use crate::metrics::Metrics;
use crate::scan::verdict::{Outcome, Verdict, VerdictDeclaration, VERDICT_SCHEMA};
use crate::store::scans::ScanRecord;
use crate::store::verdicts::VerdictSigner;
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
    /// Signs each verdict as it joins the chain (the node key); `None` leaves them unsigned.
    pub signer: Option<Arc<dyn VerdictSigner>>,
    pub manifest: ManifestCheck,
    pub transit: Transit,
    /// Told of each verdict queued, so the drain sends it at once rather than at its next
    /// poll; `None` where no uplink runs (benches).
    pub uplink: Option<crate::uplink::UplinkHandle>,
}

/// The manifest and empty-container checks as the pipeline and the transit re-check run
/// them. Cheap to clone.
#[derive(Clone)]
pub struct ManifestCheck {
    /// `None` when no model is configured (the check does not run).
    pub matcher: Option<Arc<Matcher>>,
    pub data_dir: PathBuf,
    pub metrics: Metrics,
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
        let manifest = self.manifest.run(&scan).await;
        let transit_exit = scan.regime == "transit" && scan.direction == "exit";
        let mut stored = None;
        // An entry that arrives between the pairing and the commit sends us round again.
        for _ in 0..3 {
            let check = if transit_exit {
                Some(self.transit.check_exit(&scan).await?)
            } else {
                None
            };
            let verdict = auto_verdict(&scan, &self.identity, manifest.clone(), check.as_ref());
            let topic = self.identity.verdict_topic();
            let signer = self.signer.clone();
            stored = self
                .store
                .write(move |t| transit::store_verdict(t, verdict, &topic, signer.as_deref()))
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
        if let Some(u) = &self.uplink {
            u.outbox_changed();
        }
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

impl ManifestCheck {
    /// Runs the checks on a stored scan off the runtime (one scan at a time per caller: the
    /// queues in front of the pipeline and the transit re-check are the bound).
    pub async fn run(&self, scan: &ScanRecord) -> Contribution {
        let declared = crate::matching::declared_codes(scan.sidecar.as_ref());
        let Some(m) = self.matcher.clone() else {
            return crate::matching::not_run(declared, "no embedding model is loaded on this node");
        };
        let (dir, rec) = (self.data_dir.clone(), scan.clone());
        let started = Instant::now();
        let r = tokio::task::spawn_blocking(move || m.check_stored_scan(&dir, &rec)).await;
        self.metrics.observe_stage("match", started.elapsed());
        r.unwrap_or_else(|e| {
            tracing::error!(scan_id = %scan.scan_id, error = %e, "manifest check panicked");
            crate::matching::not_run(declared, "the matching failed on this node (see its log)")
        })
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

/// The automatic verdict from the checks this node ran: the manifest check's contribution
/// and, for a transit exit scan, the transit check.
pub fn auto_verdict(
    scan: &ScanRecord,
    me: &NodeIdentity,
    manifest: Contribution,
    transit: Option<&TransitCheck>,
) -> Verdict {
    let mut reasons = manifest.reasons.clone();
    let mut outcomes = vec![manifest.outcome];
    if let Some(t) = transit {
        reasons.extend(t.reasons.iter().cloned());
        outcomes.push(t.outcome);
    }
    let outcome = combine(&outcomes);
    let model = manifest.model.clone();
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
        outcome,
        decided_by: "auto".into(),
        reasons,
        manifest: manifest.manifest,
        transit: transit.map(|t| t.result.clone()),
        model,
        supersedes: None,
        note: None,
        prev_hash: String::new(),
        signing: Some(crate::store::chain::Signing::rfc8785_ed25519()),
        signature: None,
    }
}
