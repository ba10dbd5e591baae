//! The per-scan job after ingest: gather what the checks say about a stored scan, decide
//! its verdict and store it with its outbox row in one transaction. Scans arrive by id on a
//! bounded queue; at start, scans stored but never decided (a crash in between) are queued
//! again. The pipeline never waits on the network and never reads the hot folder.
//!
//! Checks that are not available are reported as such in the verdict's `reasons`, with
//! `refer` as the outcome: the node never invents a score.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::scan::verdict::{
    ManifestResult, ManifestStatus, Outcome, Verdict, VerdictDeclaration, VERDICT_SCHEMA,
};
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
        let verdict = auto_verdict(&scan, &self.identity);
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

/// The automatic verdict from the checks this build can run.
pub fn auto_verdict(scan: &ScanRecord, me: &NodeIdentity) -> Verdict {
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
    if scan.regime == "transit" && scan.direction == "exit" {
        reasons.push(
            "transit check not run: entry/exit comparison is not available in this build".into(),
        );
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
        outcome: Outcome::Refer,
        decided_by: "auto".into(),
        reasons,
        manifest: ManifestResult {
            status: ManifestStatus::Unknown,
            declared_hs_codes: declared,
            top_matches: Vec::new(),
            reason: Some(manifest_reason),
        },
        transit: None,
        model: None,
        supersedes: None,
        note: None,
        prev_hash: String::new(),
        signature: None,
    }
}
