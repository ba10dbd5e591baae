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
    /// The manifest check; `None` when no model is configured (the check does not run).
    pub matcher: Option<Arc<Matcher>>,
    pub data_dir: PathBuf,
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
        let manifest = self.manifest_check(&scan).await;
        let verdict = auto_verdict(&scan, &self.identity, manifest);
        let topic = self.identity.verdict_topic();
        let signer = self.signer.clone();
        let stored = self
            .store
            .write(move |t| {
                store::verdicts::insert_with_outbox(t, verdict, &topic, signer.as_deref())
            })
            .await?;
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

impl Pipeline {
    /// The manifest and empty-container checks, off the runtime (one scan at a time: the
    /// queue in front of the pipeline is the bound).
    async fn manifest_check(&self, scan: &ScanRecord) -> Contribution {
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

/// The automatic verdict from the checks this build can run. Outcome policy: `alert` if any
/// check says alert, `refer` if any check refers or did not run, else `clear`.
pub fn auto_verdict(scan: &ScanRecord, me: &NodeIdentity, manifest: Contribution) -> Verdict {
    let mut reasons = manifest.reasons.clone();
    let mut outcomes = vec![manifest.outcome];
    if scan.regime == "transit" && scan.direction == "exit" {
        reasons.push(
            "transit check not run: entry/exit comparison is not available in this build".into(),
        );
        outcomes.push(Outcome::Refer);
    }
    let outcome = if outcomes.contains(&Outcome::Alert) {
        Outcome::Alert
    } else if outcomes.contains(&Outcome::Refer) {
        Outcome::Refer
    } else {
        Outcome::Clear
    };
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
        transit: None,
        model,
        supersedes: None,
        note: None,
        prev_hash: String::new(),
        signature: None,
    }
}
