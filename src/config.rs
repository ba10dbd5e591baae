//! Configuration: the TOML file is parsed into [`RawConfig`] (everything optional, unknown
//! keys refused), command-line/environment overrides are laid over it, and the result is
//! validated into [`Config`]. Every error names the key, the bad value and what is allowed.
//! This module never touches the file system beyond reading the one config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::decode::DecodeLimits;
use crate::scan::ValidationLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}` = {value}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

pub(crate) fn invalid(
    key: &'static str,
    value: impl std::fmt::Display,
    allowed: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

/// The config file as written, before defaults and checks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub node: RawNode,
    #[serde(default)]
    pub paths: RawPaths,
    #[serde(default)]
    pub web: RawWeb,
    #[serde(default)]
    pub ingest: RawIngest,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub uplink: crate::uplink::config::RawUplink,
    #[serde(default)]
    pub matching: RawMatching,
    #[serde(default)]
    pub transit: RawTransit,
    #[serde(default)]
    pub retention: RawRetention,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub node_id: Option<String>,
    pub site_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub data_dir: Option<PathBuf>,
    pub hot_folder: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub listen: Option<String>,
    pub request_timeout_secs: Option<u64>,
    pub max_concurrent_uploads: Option<u32>,
    pub tls: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub session_hours: Option<u64>,
    pub login_max_failures: Option<u32>,
    pub login_window_secs: Option<u64>,
    pub login_name_backoff_max_secs: Option<u64>,
    pub session_idle_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
    pub max_megapixels: Option<u32>,
    pub max_file_mb: Option<u64>,
    pub settle_ms: Option<u64>,
    pub missing_image_timeout_secs: Option<u64>,
    pub rescan_secs: Option<u64>,
    pub workers: Option<u32>,
    pub read_budget_mb: Option<u32>,
    pub queue_depth: Option<u32>,
    pub max_clock_skew_secs: Option<u64>,
    pub max_scan_age_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub deadline_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatching {
    pub model: Option<PathBuf>,
    pub backend: Option<String>,
    pub ort_library: Option<PathBuf>,
    pub top_k: Option<u32>,
    pub temperature: Option<f64>,
    pub consistent_min: Option<f64>,
    pub inconsistent_max: Option<f64>,
    pub alert_confidence: Option<f64>,
    pub empty_fill_max: Option<f64>,
    pub loaded_fill_min: Option<f64>,
}

/// `[matching]`: the embedding model and the thresholds of the manifest check.
#[derive(Debug, Clone)]
pub struct MatchingConfig {
    /// The model contract (`models/<name>.toml`); `None`: no model, the check does not run.
    pub model: Option<PathBuf>,
    pub backend: crate::matching::BackendChoice,
    pub ort_library: Option<PathBuf>,
    pub params: crate::matching::CheckParams,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransit {
    pub unpaired_after_hours: Option<f64>,
    pub sweep_secs: Option<u64>,
    pub min_region_m2: Option<f64>,
    pub refer_score: Option<f64>,
    pub alert_score: Option<f64>,
    pub alert_min_area_m2: Option<f64>,
    pub min_alignment_quality: Option<f64>,
    pub target_false_alarm_rate: Option<f64>,
}

/// Values given on the command line or in `RIAC_*` variables; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub hot_folder: Option<PathBuf>,
    pub listen: Option<String>,
    pub log_format: Option<String>,
    /// `--broker` / `RIAC_BROKER`: the central RIAC's MQTT broker, over `uplink.broker`.
    pub broker: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub site_id: String,
    pub data_dir: PathBuf,
    pub hot_folder: PathBuf,
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    pub max_concurrent_uploads: usize,
    pub ingest: IngestConfig,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_deadline: Duration,
    pub web: WebConfig,
    pub uplink: crate::uplink::config::UplinkConfig,
    pub matching: MatchingConfig,
    pub transit: TransitConfig,
    pub retention: RetentionConfig,
}

/// `[retention]` as written: see firmware-config/riac-node.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub interval_secs: Option<u64>,
    pub max_age_days: Option<f64>,
    pub max_gb: Option<f64>,
    pub min_free_gb: Option<f64>,
    pub rejected_days: Option<f64>,
}

/// `[retention]`: when scan images are evicted (oldest first) and when intake stops.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How often the retention pass runs.
    pub interval: Duration,
    /// Scans older than this (by reception) lose their images; `None`: no age limit.
    pub max_age: Option<Duration>,
    /// The most bytes scan images may take under `<data_dir>/scans`; `None`: no quota.
    pub max_bytes: Option<u64>,
    /// Free space on the data dir's filesystem kept at least this large: eviction first,
    /// then intake stops (HTTP 507, drops wait in the hot folder).
    pub min_free_bytes: u64,
    /// Rejected drops (`<data_dir>/rejected/`) older than this are deleted; `None`: kept.
    pub rejected_max_age: Option<Duration>,
}

fn retention_config(r: RawRetention) -> Result<RetentionConfig, ConfigError> {
    const GB: f64 = 1024.0 * 1024.0 * 1024.0;
    let days = ranged_f64("retention.max_age_days", r.max_age_days, 0.0, 0.0, 36_500.0)?;
    let max_gb = ranged_f64("retention.max_gb", r.max_gb, 0.0, 0.0, 1_000_000.0)?;
    let min_free_gb = ranged_f64(
        "retention.min_free_gb",
        r.min_free_gb,
        1.0,
        0.0,
        1_000_000.0,
    )?;
    let rejected_days = ranged_f64(
        "retention.rejected_days",
        r.rejected_days,
        30.0,
        0.0,
        36_500.0,
    )?;
    Ok(RetentionConfig {
        rejected_max_age: (rejected_days > 0.0)
            .then(|| Duration::from_secs_f64(rejected_days * 86_400.0)),
        interval: Duration::from_secs(ranged(
            "retention.interval_secs",
            r.interval_secs,
            300,
            1,
            86_400,
        )?),
        max_age: (days > 0.0).then(|| Duration::from_secs_f64(days * 86_400.0)),
        max_bytes: (max_gb > 0.0).then_some((max_gb * GB) as u64),
        min_free_bytes: (min_free_gb * GB) as u64,
    })
}

/// `[transit]`: pairing timeouts and the transit check's decision thresholds (per site).
#[derive(Debug, Clone)]
pub struct TransitConfig {
    /// An exit still awaiting its entry after this long becomes `unpaired`.
    pub unpaired_after: Duration,
    /// How often awaiting exits are checked (entry arrived meanwhile? timed out?).
    pub sweep: Duration,
    pub thresholds: crate::compare::Thresholds,
    /// Share of clean pairs a scanner pair's calibration lets through as `changed`
    /// (`riac-node calibrate transit`).
    pub target_false_alarm_rate: f64,
}

/// The operator UI's security settings (`[web]`).
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub tls: Option<TlsConfig>,
    /// Absolute lifetime of a login session, however active it is.
    pub session_lifetime: Duration,
    /// A session unused for this long ends (the operator walked away from the screen).
    pub session_idle: Duration,
    /// Failed logins allowed per (client address, user name) within `login_window`; a
    /// client address gets four times as many over all names.
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// Cap of the per-name backoff that slows guessing one name from many addresses; it
    /// is all a typo-ing owner ever waits for the attacker's sake (a fresh address is
    /// never held back by it).
    pub login_name_backoff_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TlsConfig {
    /// The site's certificate and key (PEM).
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate generated on first start under `<data_dir>/tls/`.
    SelfSigned,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub limits: DecodeLimits,
    pub validation: ValidationLimits,
    pub settle: Duration,
    pub missing_image_timeout: Duration,
    pub rescan: Duration,
    pub workers: usize,
    /// MiB of drop files read into memory and not yet stored (hot folder).
    pub read_budget_mib: u32,
    pub queue_depth: usize,
}

pub const DEFAULT_CONFIG_PATH: &str = "/etc/riac-node/riac-node.toml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/riac-node";
/// The node's database file, inside its data dir.
pub const DB_FILE: &str = "riac-node.db";

/// The database file of the data dir `data_dir`: the one place its name is joined.
pub fn db_in(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl RawConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }
}

fn site_identifier(
    key: &'static str,
    v: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    let s = v.unwrap_or_else(|| default.to_string());
    // Ids become MQTT topic levels, so the MQTT wildcards and separators are refused.
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s)
    } else {
        Err(invalid(
            key,
            format!("{s:?}"),
            "1-64 characters of A-Z a-z 0-9 . _ - (it is used in MQTT topics)",
        ))
    }
}

pub(crate) fn ranged<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let x = v.unwrap_or(default);
    if x < min || x > max {
        return Err(invalid(key, x, format!("must be between {min} and {max}")));
    }
    Ok(x)
}

fn absolute_dir(key: &'static str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(invalid(key, "\"\"", "must be a directory path"));
    }
    // A relative path would depend on the working directory systemd happens to give us.
    if p.is_relative() {
        return Ok(std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p));
    }
    Ok(p)
}

fn web_config(w: &RawWeb, listen: SocketAddr) -> Result<WebConfig, ConfigError> {
    // Plain HTTP only where nobody else can listen in: TLS is on by default for any address
    // but loopback.
    let tls_on = w.tls.unwrap_or(!listen.ip().is_loopback());
    let tls = match (tls_on, &w.tls_cert, &w.tls_key) {
        (false, None, None) => None,
        (false, _, _) => {
            return Err(invalid(
                "web.tls",
                "false",
                "web.tls_cert and web.tls_key are set but TLS is off; remove them or set web.tls = true",
            ))
        }
        (true, None, None) => Some(TlsConfig::SelfSigned),
        (true, Some(cert), Some(key)) => Some(TlsConfig::Files {
            cert: absolute_dir("web.tls_cert", cert.clone())?,
            key: absolute_dir("web.tls_key", key.clone())?,
        }),
        (true, Some(_), None) => {
            return Err(invalid(
                "web.tls_key",
                "(missing)",
                "web.tls_cert is set: give the matching private key file too",
            ))
        }
        (true, None, Some(_)) => {
            return Err(invalid(
                "web.tls_cert",
                "(missing)",
                "web.tls_key is set: give the matching certificate file too",
            ))
        }
    };
    Ok(WebConfig {
        tls,
        session_lifetime: Duration::from_secs(
            3600 * ranged("web.session_hours", w.session_hours, 12, 1, 168)?,
        ),
        login_max_failures: ranged("web.login_max_failures", w.login_max_failures, 5, 1, 1000)?,
        login_window: Duration::from_secs(ranged(
            "web.login_window_secs",
            w.login_window_secs,
            300,
            10,
            86_400,
        )?),
        login_name_backoff_max: Duration::from_secs(ranged(
            "web.login_name_backoff_max_secs",
            w.login_name_backoff_max_secs,
            30,
            1,
            600,
        )?),
        session_idle: Duration::from_secs(
            60 * ranged(
                "web.session_idle_minutes",
                w.session_idle_minutes,
                60,
                5,
                10_080,
            )?,
        ),
    })
}

fn fraction(key: &'static str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    let x = v.unwrap_or(default);
    if !(0.0..=1.0).contains(&x) {
        return Err(invalid(key, x, "must be between 0 and 1"));
    }
    Ok(x)
}

fn matching_config(m: RawMatching) -> Result<MatchingConfig, ConfigError> {
    use crate::matching::{BackendChoice, CheckParams};
    let d = CheckParams::default();
    let backend_s = m.backend.unwrap_or_else(|| "auto".into());
    let backend = BackendChoice::parse(&backend_s).ok_or_else(|| {
        invalid(
            "matching.backend",
            format!("{backend_s:?}"),
            "one of: auto, tract, onnxruntime",
        )
    })?;
    let model = m.model.filter(|p| !p.as_os_str().is_empty());
    let ort_library = m.ort_library.filter(|p| !p.as_os_str().is_empty());
    let temperature = m.temperature.unwrap_or(d.temperature);
    if !(temperature > 0.0 && temperature <= 1.0) {
        return Err(invalid(
            "matching.temperature",
            temperature,
            "must be more than 0 and at most 1",
        ));
    }
    let params = CheckParams {
        top_k: ranged("matching.top_k", m.top_k, d.top_k as u32, 1, 50)? as usize,
        temperature,
        consistent_min: fraction(
            "matching.consistent_min",
            m.consistent_min,
            d.consistent_min,
        )?,
        inconsistent_max: fraction(
            "matching.inconsistent_max",
            m.inconsistent_max,
            d.inconsistent_max,
        )?,
        alert_confidence: fraction(
            "matching.alert_confidence",
            m.alert_confidence,
            d.alert_confidence,
        )?,
        empty_fill_max: fraction(
            "matching.empty_fill_max",
            m.empty_fill_max,
            d.empty_fill_max,
        )?,
        loaded_fill_min: fraction(
            "matching.loaded_fill_min",
            m.loaded_fill_min,
            d.loaded_fill_min,
        )?,
        min_tiles: d.min_tiles,
    };
    if params.inconsistent_max >= params.consistent_min {
        return Err(invalid(
            "matching.inconsistent_max",
            params.inconsistent_max,
            format!(
                "must be below matching.consistent_min ({})",
                params.consistent_min
            ),
        ));
    }
    if params.empty_fill_max >= params.loaded_fill_min {
        return Err(invalid(
            "matching.empty_fill_max",
            params.empty_fill_max,
            format!(
                "must be below matching.loaded_fill_min ({})",
                params.loaded_fill_min
            ),
        ));
    }
    Ok(MatchingConfig {
        model,
        backend,
        ort_library,
        params,
    })
}

/// [`ranged`] for floats, which also refuses NaN (TOML can spell it).
fn ranged_f64(
    key: &'static str,
    v: Option<f64>,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, ConfigError> {
    let x = ranged(key, v, default, min, max)?;
    if x.is_nan() {
        return Err(invalid(key, x, format!("must be between {min} and {max}")));
    }
    Ok(x)
}

fn transit_config(t: RawTransit) -> Result<TransitConfig, ConfigError> {
    let d = crate::compare::Thresholds::default();
    let ranged = ranged_f64;
    let hours = ranged(
        "transit.unpaired_after_hours",
        t.unpaired_after_hours,
        72.0,
        0.0001,
        8760.0,
    )?;
    let thresholds = crate::compare::Thresholds {
        min_region_m2: ranged(
            "transit.min_region_m2",
            t.min_region_m2,
            d.min_region_m2,
            0.0,
            100.0,
        )?,
        refer_score: ranged(
            "transit.refer_score",
            t.refer_score,
            d.refer_score,
            0.0,
            1.0,
        )?,
        alert_score: ranged(
            "transit.alert_score",
            t.alert_score,
            d.alert_score,
            0.0,
            1.0,
        )?,
        alert_min_area_m2: ranged(
            "transit.alert_min_area_m2",
            t.alert_min_area_m2,
            d.alert_min_area_m2,
            0.0,
            100.0,
        )?,
        min_alignment_quality: ranged(
            "transit.min_alignment_quality",
            t.min_alignment_quality,
            d.min_alignment_quality,
            0.0,
            1.0,
        )?,
        calibrated: None,
    };
    if thresholds.alert_score < thresholds.refer_score {
        return Err(invalid(
            "transit.alert_score",
            thresholds.alert_score,
            format!(
                "must be at least transit.refer_score ({}): an alert is a stronger change than a referral",
                thresholds.refer_score
            ),
        ));
    }
    Ok(TransitConfig {
        unpaired_after: Duration::from_secs_f64(hours * 3600.0),
        sweep: Duration::from_secs(self::ranged(
            "transit.sweep_secs",
            t.sweep_secs,
            300,
            1,
            86_400,
        )?),
        thresholds,
        target_false_alarm_rate: ranged(
            "transit.target_false_alarm_rate",
            t.target_false_alarm_rate,
            crate::compare::calibrate::DEFAULT_TARGET_FAR,
            0.0001,
            0.2,
        )?,
    })
}

impl Config {
    /// Applies defaults and overrides to `raw` and checks every value.
    pub fn from_raw(raw: RawConfig, ov: &Overrides) -> Result<Self, ConfigError> {
        let node_id = site_identifier("node.node_id", raw.node.node_id, "node-1")?;
        let site_id = site_identifier("node.site_id", raw.node.site_id, "SITE")?;

        let data_dir = absolute_dir(
            "paths.data_dir",
            ov.data_dir
                .clone()
                .or(raw.paths.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        )?;
        let hot_folder = absolute_dir(
            "paths.hot_folder",
            ov.hot_folder
                .clone()
                .or(raw.paths.hot_folder)
                .unwrap_or_else(|| data_dir.join("incoming")),
        )?;
        if hot_folder == data_dir {
            return Err(invalid(
                "paths.hot_folder",
                hot_folder.display(),
                "must not be the data directory itself (use a subfolder such as <data_dir>/incoming)",
            ));
        }

        let listen_s = ov
            .listen
            .clone()
            .or(raw.web.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            invalid(
                "web.listen",
                format!("{listen_s:?}"),
                "an IP address and port, like 127.0.0.1:8080 or [::]:8443",
            )
        })?;
        let request_timeout = Duration::from_secs(ranged(
            "web.request_timeout_secs",
            raw.web.request_timeout_secs,
            60,
            1,
            3600,
        )?);
        let max_concurrent_uploads = ranged(
            "web.max_concurrent_uploads",
            raw.web.max_concurrent_uploads,
            4,
            1,
            256,
        )? as usize;

        let web = web_config(&raw.web, listen)?;

        let i = raw.ingest;
        let max_width = ranged("ingest.max_width", i.max_width, 20_000, 16, 100_000)?;
        let max_height = ranged("ingest.max_height", i.max_height, 8_000, 16, 100_000)?;
        let max_megapixels = ranged("ingest.max_megapixels", i.max_megapixels, 80, 1, 2_000)?;
        let max_file_mb = ranged("ingest.max_file_mb", i.max_file_mb, 512, 1, 16_384)?;
        let workers = match ranged("ingest.workers", i.workers, 0, 0, 64)? {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n as usize,
        };
        let ingest = IngestConfig {
            limits: DecodeLimits {
                max_width,
                max_height,
                max_pixels: u64::from(max_megapixels) * 1_000_000,
                max_file_bytes: max_file_mb * 1024 * 1024,
            },
            validation: ValidationLimits {
                max_future: Duration::from_secs(ranged(
                    "ingest.max_clock_skew_secs",
                    i.max_clock_skew_secs,
                    600,
                    0,
                    86_400,
                )?),
                max_age: Duration::from_secs(
                    86_400 * ranged("ingest.max_scan_age_days", i.max_scan_age_days, 90, 1, 3650)?,
                ),
            },
            settle: Duration::from_millis(ranged(
                "ingest.settle_ms",
                i.settle_ms,
                1000,
                0,
                600_000,
            )?),
            missing_image_timeout: Duration::from_secs(ranged(
                "ingest.missing_image_timeout_secs",
                i.missing_image_timeout_secs,
                120,
                1,
                86_400,
            )?),
            rescan: Duration::from_secs(ranged("ingest.rescan_secs", i.rescan_secs, 10, 1, 3600)?),
            workers,
            read_budget_mib: ranged("ingest.read_budget_mb", i.read_budget_mb, 64, 8, 65_536)?,
            queue_depth: ranged("ingest.queue_depth", i.queue_depth, 16, 1, 10_000)? as usize,
        };

        let fmt = ov
            .log_format
            .clone()
            .or(raw.log.format)
            .unwrap_or_else(|| "human".into());
        let log_format = match fmt.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => {
                return Err(invalid(
                    "log.format",
                    format!("{fmt:?}"),
                    "one of: human, json",
                ))
            }
        };
        let log_level = raw.log.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{log_level:?}"),
                "a level (error, warn, info, debug, trace) or a filter like \"info,riac_node::ingest=debug\"",
            ));
        }

        let uplink = crate::uplink::config::validate(
            raw.uplink,
            ov.broker.clone(),
            &data_dir,
            &node_id,
            &site_id,
        )?;
        let matching = matching_config(raw.matching)?;
        let transit = transit_config(raw.transit)?;
        let retention = retention_config(raw.retention)?;

        Ok(Config {
            uplink,
            node_id,
            site_id,
            data_dir,
            hot_folder,
            listen,
            request_timeout,
            max_concurrent_uploads,
            ingest,
            log_format,
            log_level,
            shutdown_deadline: Duration::from_secs(ranged(
                "shutdown.deadline_secs",
                raw.shutdown.deadline_secs,
                20,
                1,
                600,
            )?),
            web,
            matching,
            transit,
            retention,
        })
    }

    /// Loads, overrides and validates the file at `path`.
    pub fn load(path: &Path, ov: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::load(path)?, ov)
    }

    /// The embedded defaults with `ov` applied: what `demo` and tests start from.
    pub fn defaults(ov: &Overrides) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig::default(), ov)
    }

    pub fn db_path(&self) -> PathBuf {
        db_in(&self.data_dir)
    }

    /// Where drops that failed validation go, beside the drops themselves so that the
    /// scanner's operators see them.
    pub fn rejected_dir(&self) -> PathBuf {
        self.hot_folder.join("rejected")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_raw(
            RawConfig::from_toml(text, Path::new("t.toml"))?,
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(
            c.hot_folder,
            PathBuf::from(DEFAULT_DATA_DIR).join("incoming")
        );
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.ingest.limits.max_width, 20_000);
    }

    #[test]
    fn shipped_config_file_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config/riac-node.toml");
        let c = Config::load(&path, &Overrides::default()).unwrap();
        let d = parse("[node]\nnode_id = \"KHI-N1\"\nsite_id = \"KHI\"\n").unwrap();
        assert_eq!(
            c.ingest.limits.max_file_bytes,
            d.ingest.limits.max_file_bytes
        );
        assert_eq!(c.ingest.settle, d.ingest.settle);
        assert_eq!(c.request_timeout, d.request_timeout);
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = parse("[ingest]\nmax_width = 0\n").unwrap_err().to_string();
        assert!(
            e.contains("ingest.max_width") && e.contains("= 0") && e.contains("between 16"),
            "{e}"
        );

        let e = parse("[web]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web.listen") && e.contains("\"localhost\""),
            "{e}"
        );

        let e = parse("[node]\nsite_id = \"KHI/#\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.site_id") && e.contains("KHI/#"), "{e}");

        let e = parse("[web]\ntls_cert = \"/etc/c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.tls_key"), "{e}");

        let e = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(e.contains("log.format") && e.contains("human, json"), "{e}");

        // Unknown keys are typos until proven otherwise.
        let e = parse("[ingest]\nmax_widht = 10\n").unwrap_err().to_string();
        assert!(e.contains("max_widht") && e.contains("max_width"), "{e}");

        let e = parse("[ingest]\nmax_width = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_width"), "{e}");
    }

    #[test]
    fn retention_defaults_and_errors() {
        let c = parse("").unwrap();
        assert_eq!(c.retention.max_age, None);
        assert_eq!(c.retention.max_bytes, None);
        assert_eq!(c.retention.min_free_bytes, 1 << 30);
        let c = parse("[retention]\nmax_age_days = 30\nmax_gb = 2\ninterval_secs = 60").unwrap();
        assert_eq!(c.retention.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.retention.max_bytes, Some(2 << 30));
        assert_eq!(c.retention.interval, Duration::from_secs(60));
        let e = parse("[retention]\nmax_gb = -1").unwrap_err().to_string();
        assert!(e.contains("retention.max_gb") && e.contains("-1"), "{e}");
        assert!(parse("[retention]\nkeep = 1").is_err());
    }

    #[test]
    fn tls_is_on_by_default_except_on_loopback() {
        assert_eq!(parse("").unwrap().web.tls, None);
        let c = parse("[web]\nlisten = \"0.0.0.0:8443\"\n").unwrap();
        assert_eq!(c.web.tls, Some(TlsConfig::SelfSigned));
        let c = parse("[web]\nlisten = \"0.0.0.0:8080\"\ntls = false\n").unwrap();
        assert_eq!(c.web.tls, None);
        let c = parse("[web]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\ntls = true\n").unwrap();
        assert_eq!(
            c.web.tls,
            Some(TlsConfig::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert_eq!(c.web.session_lifetime, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn overrides_win() {
        let raw = RawConfig::from_toml(
            "[paths]\ndata_dir = \"/a\"\n[web]\nlisten = \"127.0.0.1:1\"\n",
            Path::new("t"),
        )
        .unwrap();
        let ov = Overrides {
            data_dir: Some("/b".into()),
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = Config::from_raw(raw, &ov).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        assert_eq!(c.hot_folder, PathBuf::from("/b/incoming"));
        assert_eq!(c.listen.port(), 2);
    }
}
