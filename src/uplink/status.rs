//! What the uplink shows of itself: the [`UplinkStatus`] snapshot behind `GET /api/v1/uplink`
//! and the retained `status` message, and the [`UplinkMetrics`] in `/metrics`. This module
//! only describes and counts; it never decides anything about the connection.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::store::outbox::OutboxStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// No broker is configured: the node works offline and the outbox grows.
    Offline,
    Connecting,
    Connected,
    /// The link is down; the node retries with backoff.
    Disconnected,
    /// The node is shutting down.
    Stopped,
}

/// How full the outbox is against `uplink.outbox_quota_mb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAlert {
    Ok,
    /// At or past `uplink.outbox_warn_percent`.
    NearFull,
    /// At or past the quota: entry packages wait, image requests are refused; verdicts and
    /// command replies are still queued (never dropped).
    OverQuota,
}

impl QuotaAlert {
    pub fn of(bytes: i64, quota: u64, warn: f64) -> QuotaAlert {
        let used = bytes.max(0) as f64 / quota.max(1) as f64;
        if used >= 1.0 {
            QuotaAlert::OverQuota
        } else if used >= warn {
            QuotaAlert::NearFull
        } else {
            QuotaAlert::Ok
        }
    }
    fn level(self) -> i64 {
        match self {
            QuotaAlert::Ok => 0,
            QuotaAlert::NearFull => 1,
            QuotaAlert::OverQuota => 2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub depth: i64,
    pub bytes: i64,
    pub verdicts: i64,
    pub entry_packages: i64,
    pub cmd_replies: i64,
    pub image_chunks: i64,
    pub oldest_unsent_verdict_at: Option<String>,
    pub oldest_unsent_verdict_age_secs: Option<f64>,
    pub quota_bytes: u64,
    pub used_fraction: f64,
    pub alert: QuotaAlert,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EntryCounters {
    /// Packages received from entry sites and stored (since start).
    pub received: u64,
    /// Packages received and refused as invalid (since start).
    pub rejected: u64,
    /// This node's packages waiting in the outbox.
    pub queued: i64,
    /// This node's packages waiting for outbox space (over quota).
    pub deferred: i64,
    /// This node's packages that could not be built (see the log and `entry_outgoing`).
    pub failed: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandCounters {
    pub received: u64,
    pub failed: u64,
}

/// The uplink as the UI and the centre see it (`GET /api/v1/uplink`, README).
#[derive(Debug, Clone, Serialize)]
pub struct UplinkStatus {
    pub enabled: bool,
    pub broker: Option<String>,
    pub client_id: Option<String>,
    pub state: ConnState,
    pub state_since: String,
    pub last_connected_at: Option<String>,
    pub last_error: Option<String>,
    /// The broker has acknowledged this connection's subscriptions (entry packages for
    /// this site, commands for this node).
    pub subscribed: bool,
    pub reconnects: u64,
    pub inflight: usize,
    pub published: u64,
    pub acknowledged: u64,
    pub last_puback_at: Option<String>,
    pub outbox: OutboxView,
    pub entry_packages: EntryCounters,
    pub commands: CommandCounters,
    pub node_public_key: Option<String>,
    pub commands_require_signature: bool,
    pub updated_at: String,
}

impl UplinkStatus {
    pub fn new(
        broker: Option<(&str, &str)>,
        quota_bytes: u64,
        node_public_key: Option<String>,
        signed_commands: bool,
    ) -> Self {
        let now = crate::store::now_rfc3339();
        UplinkStatus {
            enabled: broker.is_some(),
            broker: broker.map(|b| b.0.to_string()),
            client_id: broker.map(|b| b.1.to_string()),
            state: if broker.is_some() {
                ConnState::Connecting
            } else {
                ConnState::Offline
            },
            state_since: now.clone(),
            last_connected_at: None,
            last_error: None,
            subscribed: false,
            reconnects: 0,
            inflight: 0,
            published: 0,
            acknowledged: 0,
            last_puback_at: None,
            outbox: OutboxView {
                depth: 0,
                bytes: 0,
                verdicts: 0,
                entry_packages: 0,
                cmd_replies: 0,
                image_chunks: 0,
                oldest_unsent_verdict_at: None,
                oldest_unsent_verdict_age_secs: None,
                quota_bytes,
                used_fraction: 0.0,
                alert: QuotaAlert::Ok,
            },
            entry_packages: EntryCounters::default(),
            commands: CommandCounters::default(),
            node_public_key,
            commands_require_signature: signed_commands,
            updated_at: now,
        }
    }

    pub fn set_state(&mut self, s: ConnState) {
        if self.state != s {
            self.state = s;
            self.state_since = crate::store::now_rfc3339();
        }
    }

    /// Folds fresh outbox figures in. Returns the alert level before, for transitions.
    pub fn set_outbox(&mut self, s: &OutboxStats, warn: f64) -> QuotaAlert {
        let before = self.outbox.alert;
        let quota = self.outbox.quota_bytes;
        let age = s.oldest_verdict_at.as_deref().and_then(age_secs);
        self.outbox = OutboxView {
            depth: s.depth,
            bytes: s.bytes,
            verdicts: s.verdicts,
            entry_packages: s.entry_packages,
            cmd_replies: s.cmd_replies,
            image_chunks: s.image_chunks,
            oldest_unsent_verdict_at: s.oldest_verdict_at.clone(),
            oldest_unsent_verdict_age_secs: age,
            quota_bytes: quota,
            used_fraction: s.bytes.max(0) as f64 / quota.max(1) as f64,
            alert: QuotaAlert::of(s.bytes, quota, warn),
        };
        self.updated_at = crate::store::now_rfc3339();
        before
    }

    /// The retained `status` message (MQTT contract): `online`, with the figures the centre
    /// watches.
    pub fn message(
        &self,
        node_id: &str,
        site_id: &str,
        model: Option<&serde_json::Value>,
    ) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "state": "online",
            "node_id": node_id,
            "site_id": site_id,
            "version": env!("CARGO_PKG_VERSION"),
            "model": model,
            "at": crate::store::now_rfc3339(),
            "outbox_depth": self.outbox.depth,
            "outbox_bytes": self.outbox.bytes,
            "outbox_alert": self.outbox.alert,
            "oldest_unsent_verdict_at": self.outbox.oldest_unsent_verdict_at,
            "last_puback_at": self.last_puback_at,
            "public_key": self.node_public_key,
        }))
        .expect("json")
    }
}

/// The `offline` status: the LWT the broker publishes if the node vanishes, and what the
/// node publishes itself on a clean stop.
pub fn offline_message(node_id: &str, site_id: &str, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "state": "offline",
        "node_id": node_id,
        "site_id": site_id,
        "version": env!("CARGO_PKG_VERSION"),
        "reason": reason,
    }))
    .expect("json")
}

/// Seconds since an RFC 3339 timestamp (None if it does not parse).
pub fn age_secs(ts: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(((time::OffsetDateTime::now_utc() - t).as_seconds_f64()).max(0.0))
}

pub fn unix_secs(ts: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The uplink's series in `/metrics` (all prefixed `riac_uplink_`).
#[derive(Clone, Default)]
pub struct UplinkMetrics {
    pub connected: Gauge,
    pub inflight: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_alert: Gauge,
    pub outbox_quota_ratio: Gauge<f64, AtomicU64>,
    pub oldest_unsent_verdict_age_seconds: Gauge<f64, AtomicU64>,
    pub last_puback_timestamp_seconds: Gauge<f64, AtomicU64>,
    pub published: Counter,
    pub acknowledged: Counter,
    pub reconnects: Counter,
    pub entry_packages_received: Counter,
    pub entry_packages_rejected: Counter,
    pub commands: Family<ResultLabel, Counter>,
}

impl UplinkMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = UplinkMetrics::default();
        let r = registry.sub_registry_with_prefix("uplink");
        r.register(
            "connected",
            "1 while connected to the central RIAC's broker",
            m.connected.clone(),
        );
        r.register(
            "inflight",
            "Messages published and not yet acknowledged",
            m.inflight.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes waiting in the outbox",
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_alert",
            "0 ok, 1 outbox near its quota, 2 over its quota",
            m.outbox_alert.clone(),
        );
        r.register(
            "outbox_quota_ratio",
            "Outbox bytes as a fraction of uplink.outbox_quota_mb",
            m.outbox_quota_ratio.clone(),
        );
        r.register(
            "oldest_unsent_verdict_age_seconds",
            "Age of the oldest verdict not yet acknowledged by the broker (0 when none)",
            m.oldest_unsent_verdict_age_seconds.clone(),
        );
        r.register(
            "last_puback_timestamp_seconds",
            "Unix time of the last PUBACK from the broker (0 before the first)",
            m.last_puback_timestamp_seconds.clone(),
        );
        r.register(
            "published",
            "Messages published (including resends)",
            m.published.clone(),
        );
        r.register(
            "acknowledged",
            "Messages acknowledged by the broker and removed from the outbox",
            m.acknowledged.clone(),
        );
        r.register(
            "reconnects",
            "Connections lost or refused",
            m.reconnects.clone(),
        );
        r.register(
            "entry_packages_received",
            "Entry packages received from entry sites and stored",
            m.entry_packages_received.clone(),
        );
        r.register(
            "entry_packages_rejected",
            "Entry packages received and refused as invalid",
            m.entry_packages_rejected.clone(),
        );
        r.register(
            "commands",
            "Commands from the centre, by result",
            m.commands.clone(),
        );
        m
    }

    pub fn set_outbox(&self, s: &UplinkStatus) {
        self.outbox_bytes.set(s.outbox.bytes);
        self.outbox_alert.set(s.outbox.alert.level());
        self.outbox_quota_ratio.set(s.outbox.used_fraction);
        self.oldest_unsent_verdict_age_seconds
            .set(s.outbox.oldest_unsent_verdict_age_secs.unwrap_or(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_levels() {
        assert_eq!(QuotaAlert::of(10, 100, 0.8), QuotaAlert::Ok);
        assert_eq!(QuotaAlert::of(80, 100, 0.8), QuotaAlert::NearFull);
        assert_eq!(QuotaAlert::of(100, 100, 0.8), QuotaAlert::OverQuota);
    }

    #[test]
    fn metric_names() {
        let mut reg = Registry::with_prefix("riac");
        let m = UplinkMetrics::register(&mut reg);
        m.connected.set(1);
        m.acknowledged.inc();
        m.commands
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("riac_uplink_connected 1"), "{out}");
        assert!(out.contains("riac_uplink_acknowledged_total 1"), "{out}");
        assert!(
            out.contains("riac_uplink_commands_total{result=\"ok\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("riac_uplink_oldest_unsent_verdict_age_seconds"),
            "{out}"
        );
    }
}
