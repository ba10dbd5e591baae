//! Prometheus metrics for `/metrics`: ingest counts, rejects, queue and outbox depth, stage
//! latencies. Registered once at start; updating a metric never blocks and never fails.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ingest::Source;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CalibrationLabel {
    calibration: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabel {
    pair: String,
}

type StageHistograms = Family<StageLabel, Histogram, fn() -> Histogram>;

/// Cheap to clone; every clone updates the same metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    ingested: Family<SourceLabel, Counter>,
    rejected: Family<SourceLabel, Counter>,
    duplicates: Family<SourceLabel, Counter>,
    verdicts: Counter,
    queue_depth: Gauge,
    outbox_depth: Gauge,
    scans_stored: Gauge,
    stage_seconds: StageHistograms,
    uplink: crate::uplink::status::UplinkMetrics,
    retention: RetentionMetrics,
    transit_comparisons: Family<CalibrationLabel, Counter>,
    transit_limits: Family<PairLabel, Gauge<f64, AtomicU64>>,
}

/// `riac_retention_*` and `riac_disk_*`, set after each retention pass.
struct RetentionMetrics {
    bytes_used: Gauge,
    evictable_bytes: Gauge,
    pinned: Gauge,
    evicted: Counter,
    last_eviction: Gauge,
    free_bytes: Gauge,
    disk_full: Gauge,
}

impl RetentionMetrics {
    fn register(r: &mut Registry) -> Self {
        let m = RetentionMetrics {
            bytes_used: Gauge::default(),
            evictable_bytes: Gauge::default(),
            pinned: Gauge::default(),
            evicted: Counter::default(),
            last_eviction: Gauge::default(),
            free_bytes: Gauge::default(),
            disk_full: Gauge::default(),
        };
        r.register(
            "retention_bytes_used",
            "Bytes of scan images kept under the data dir",
            m.bytes_used.clone(),
        );
        r.register(
            "retention_evictable_bytes",
            "Bytes of scan images retention may evict (not pinned)",
            m.evictable_bytes.clone(),
        );
        r.register(
            "retention_pinned_scans",
            "Scans whose images are pinned (alert, review, outbox, transit, admin)",
            m.pinned.clone(),
        );
        r.register(
            "retention_evicted_scans",
            "Scans whose images retention evicted",
            m.evicted.clone(),
        );
        r.register(
            "retention_last_eviction_timestamp_seconds",
            "Unix time of the last eviction (0: none since start)",
            m.last_eviction.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free bytes on the data dir's file system",
            m.free_bytes.clone(),
        );
        r.register(
            "disk_full",
            "1 while intake is paused because free space is below retention.min_free_gb",
            m.disk_full.clone(),
        );
        m
    }
}

fn stage_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("riac");
        let ingested = Family::<SourceLabel, Counter>::default();
        let rejected = Family::<SourceLabel, Counter>::default();
        let duplicates = Family::<SourceLabel, Counter>::default();
        let verdicts = Counter::default();
        let queue_depth = Gauge::default();
        let outbox_depth = Gauge::default();
        let scans_stored = Gauge::default();
        let stage_seconds: StageHistograms = Family::new_with_constructor(stage_histogram);
        let started = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "scans_ingested",
            "Scans stored, by source",
            ingested.clone(),
        );
        registry.register(
            "scans_rejected",
            "Drops rejected, by source",
            rejected.clone(),
        );
        registry.register(
            "scans_duplicate",
            "Drops whose identical content was already stored",
            duplicates.clone(),
        );
        registry.register("verdicts", "Verdicts decided", verdicts.clone());
        registry.register(
            "pipeline_queue_depth",
            "Scans stored and waiting for their verdict",
            queue_depth.clone(),
        );
        registry.register(
            "outbox_depth",
            "Messages waiting in the outbox for the central RIAC",
            outbox_depth.clone(),
        );
        registry.register(
            "scans_stored",
            "Scans in the database",
            scans_stored.clone(),
        );
        registry.register(
            "stage_seconds",
            "Time spent per processing stage",
            stage_seconds.clone(),
        );
        registry.register(
            "start_time_seconds",
            "Unix time the node started",
            started.clone(),
        );
        let transit_comparisons = Family::<CalibrationLabel, Counter>::default();
        registry.register(
            "transit_comparisons",
            "Transit comparisons, by whether their scanner pair was calibrated",
            transit_comparisons.clone(),
        );
        let transit_limits = Family::<PairLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "transit_calibration_refer_od_m2",
            "Calibrated refer limit (OD x m2) of each calibrated scanner pair (entry->exit)",
            transit_limits.clone(),
        );
        let uplink = crate::uplink::status::UplinkMetrics::register(&mut registry);
        let retention = RetentionMetrics::register(&mut registry);
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                ingested,
                rejected,
                duplicates,
                verdicts,
                queue_depth,
                outbox_depth,
                scans_stored,
                stage_seconds,
                uplink,
                retention,
                transit_comparisons,
                transit_limits,
            }),
        }
    }

    pub fn ingested(&self, s: Source) {
        self.inner
            .ingested
            .get_or_create(&SourceLabel { source: s.as_str() })
            .inc();
    }
    pub fn rejected(&self, s: Source) {
        self.inner
            .rejected
            .get_or_create(&SourceLabel { source: s.as_str() })
            .inc();
    }
    pub fn duplicate(&self, s: Source) {
        self.inner
            .duplicates
            .get_or_create(&SourceLabel { source: s.as_str() })
            .inc();
    }
    pub fn verdict(&self) {
        self.inner.verdicts.inc();
    }
    pub fn queue_depth(&self, n: usize) {
        self.inner.queue_depth.set(n as i64);
    }
    pub fn observe_stage(&self, stage: &'static str, d: Duration) {
        self.inner
            .stage_seconds
            .get_or_create(&StageLabel { stage })
            .observe(d.as_secs_f64());
    }
    pub fn count_transit_calibration(&self, calibrated: bool) {
        let calibration = if calibrated {
            "calibrated"
        } else {
            "uncalibrated"
        };
        self.inner
            .transit_comparisons
            .get_or_create(&CalibrationLabel { calibration })
            .inc();
    }
    /// One gauge per calibrated scanner pair, set from the calibration in force.
    pub fn set_transit_calibration(&self, set: &crate::compare::calibrate::CalibrationSet) {
        self.inner.transit_limits.clear();
        for p in set.pairs() {
            self.inner
                .transit_limits
                .get_or_create(&PairLabel { pair: p.key() })
                .set(p.refer_od_m2);
        }
    }
    pub fn set_store_gauges(&self, outbox: i64, scans: i64) {
        self.inner.outbox_depth.set(outbox);
        self.inner.scans_stored.set(scans);
    }

    /// The figures of a retention pass that evicted `evicted` scans.
    pub fn set_retention(&self, st: &crate::retention::RetentionStatus, evicted: u64) {
        let m = &self.inner.retention;
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        m.bytes_used.set(g(st.used_bytes));
        m.evictable_bytes.set(g(st.evictable_bytes));
        m.pinned.set(g(st.pinned_scans));
        m.free_bytes.set(g(st.free_bytes));
        m.disk_full.set(i64::from(st.disk_full));
        if evicted > 0 {
            m.evicted.inc_by(evicted);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            m.last_eviction.set(now);
        }
    }

    /// Raises or clears the disk-full alert between passes (intake found it first).
    pub fn set_disk_full(&self, full: bool) {
        self.inner.retention.disk_full.set(i64::from(full));
    }

    pub fn set_outbox_depth(&self, n: i64) {
        self.inner.outbox_depth.set(n);
    }

    /// The uplink's series (`riac_uplink_*`), updated by the uplink module.
    pub fn uplink(&self) -> &crate::uplink::status::UplinkMetrics {
        &self.inner.uplink
    }

    pub fn ingested_count(&self, s: Source) -> u64 {
        self.inner
            .ingested
            .get_or_create(&SourceLabel { source: s.as_str() })
            .get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.ingested(Source::Http);
        m.observe_stage("decode", Duration::from_millis(3));
        let text = m.encode();
        assert!(
            text.contains("riac_scans_ingested_total{source=\"http\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("riac_stage_seconds_bucket{le=\"0.004\",stage=\"decode\"} 1")
                || text.contains("riac_stage_seconds_bucket{stage=\"decode\",le=\"0.004\"} 1"),
            "{text}"
        );
    }
}
