//! Benchmarks run by `riac-node bench ...`: they measure the real code paths on this
//! machine and print figures to quote. Never used by tests; never run by the daemon.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::ingest::{DropData, IngestOutcome, Ingestor, Source};
use crate::metrics::Metrics;
use crate::pipeline::{NodeIdentity, Pipeline};
use crate::sim::{SimOptions, Simulator};
use crate::store::Store;

#[derive(Debug, serde::Serialize)]
pub struct IngestReport {
    pub scans: usize,
    pub width: u32,
    pub height: u32,
    pub tiff_bytes: usize,
    pub workers: usize,
    pub seconds: f64,
    pub scans_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub peak_rss_mib: f64,
    pub cpus: usize,
}

/// A share counted as hits of trials, as every bench reports one (detection, false alarms,
/// inconclusive...), so that figures from several runs can be summed before dividing.
#[derive(Debug, Default, serde::Serialize)]
pub struct Rate {
    pub hits: usize,
    pub of: usize,
    pub rate: f64,
}

impl Rate {
    /// One more trial.
    pub fn add(&mut self, hit: bool) {
        self.add_counts(usize::from(hit), 1);
    }

    /// `hits` of `of` more trials (another run's counts).
    pub fn add_counts(&mut self, hits: usize, of: usize) {
        self.hits += hits;
        self.of += of;
        self.rate = if self.of > 0 {
            self.hits as f64 / self.of as f64
        } else {
            0.0
        };
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench setup failed: {0}")]
    Setup(String),
    #[error("ingest failed during the bench: {0}")]
    Ingest(#[from] crate::ingest::IngestError),
}

/// Decode + validate + store throughput for `count` 16-bit TIFF scans of `width`x`height`,
/// through the same [`Ingestor`] and pipeline the daemon uses, into a temp data dir.
pub async fn ingest(
    count: usize,
    width: u32,
    height: u32,
    workers: usize,
) -> Result<IngestReport, BenchError> {
    let dir = tempfile::Builder::new()
        .prefix("riac-bench-")
        .tempdir()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut cfg = Config::defaults(&Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    cfg.ingest.workers = workers.max(1);

    // One realistic scan, resampled to the asked size, reused with a new id each time.
    let (sidecar, tiff) =
        tokio::task::spawn_blocking(move || -> Result<(serde_json::Value, Vec<u8>), String> {
            let mut sim = Simulator::new(SimOptions::default());
            let d = sim.next_drop();
            let img = image::imageops::resize(
                &d.image,
                width,
                height,
                image::imageops::FilterType::Triangle,
            );
            let mut out = Vec::new();
            image::DynamicImage::ImageLuma16(img)
                .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Tiff)
                .map_err(|e| e.to_string())?;
            Ok((d.sidecar, out))
        })
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map_err(BenchError::Setup)?;

    let db = cfg.db_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let metrics = Metrics::new();
    let (tx, rx) = mpsc::channel(cfg.ingest.queue_depth);
    let token = CancellationToken::new();
    let identity = NodeIdentity {
        node_id: "bench".into(),
        site_id: "BENCH".into(),
    };
    // The bench's scans are not transit scans; the transit check is only wired in.
    let manifest = crate::pipeline::ManifestCheck {
        matcher: None,
        data_dir: cfg.data_dir.clone(),
        metrics: metrics.clone(),
    };
    let (transit, _transit_rx) = crate::compare::transit::Transit::new(
        &cfg,
        Default::default(),
        store.clone(),
        metrics.clone(),
        identity.clone(),
        None,
        manifest.clone(),
    );
    let pipeline = Pipeline {
        store: store.clone(),
        metrics: metrics.clone(),
        identity,
        signer: None,
        manifest,
        transit,
        uplink: None,
    };
    let pipe_task = tokio::spawn(pipeline.run(rx, token.clone()));
    let ingestor = Ingestor::new(&cfg, store.clone(), metrics, tx);

    let tiff = Arc::new(tiff);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut feeders = Vec::new();
    for _ in 0..cfg.ingest.workers {
        let (ingestor, tiff, next, sidecar) = (
            ingestor.clone(),
            tiff.clone(),
            next.clone(),
            sidecar.clone(),
        );
        feeders.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let mut sc = sidecar.clone();
                let id = format!("BENCH-{i:06}");
                sc["scan_id"] = id.clone().into();
                sc["image"]["file"] = format!("{id}.tiff").into();
                let bytes = serde_json::to_vec(&sc).expect("json");
                let t0 = Instant::now();
                let meta = ingestor
                    .parse_sidecar(&bytes)
                    .map_err(crate::ingest::IngestError::Rejected)?;
                let out = ingestor
                    .ingest(
                        meta,
                        DropData {
                            sidecar: bytes,
                            image: tiff.to_vec(),
                            low: None,
                        },
                        Source::Http,
                    )
                    .await?;
                debug_assert!(matches!(out, IngestOutcome::Stored { .. }));
                lat.push(t0.elapsed());
            }
            Ok::<_, crate::ingest::IngestError>(lat)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for f in feeders {
        latencies.extend(f.await.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    // The last verdicts are part of the work measured.
    loop {
        let undecided = store
            .read(|c| Ok(crate::store::scans::undecided(c)?.len()))
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        if undecided == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    token.cancel();
    drop(ingestor);
    let _ = pipe_task.await;
    store.close().await;

    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(IngestReport {
        scans: count,
        width,
        height,
        tiff_bytes: tiff.len(),
        workers: cfg.ingest.workers,
        seconds,
        scans_per_second: count as f64 / seconds,
        latency_p50_ms: pct(0.5),
        latency_p95_ms: pct(0.95),
        peak_rss_mib: peak_rss_mib(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}
