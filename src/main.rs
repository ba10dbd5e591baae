//! The `riac-node` command line: the daemon (`run`), the one-command demo, the scanner
//! simulator, config validation and benchmarks. Errors end here, as anyhow reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use riac_node::config::{Config, LogFormat, Overrides, RawConfig, DEFAULT_CONFIG_PATH};
use riac_node::sim::{SimDrop, SimImageFormat, SimOptions, Simulator};

#[derive(Parser)]
#[command(
    name = "riac-node",
    version,
    about = "Edge node for customs cargo X-ray scanning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct NodeArgs {
    /// Data directory (database, stored scans). Overrides paths.data_dir.
    #[arg(long, env = "RIAC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Folder the scanner drops scans into. Overrides paths.hot_folder.
    #[arg(long, env = "RIAC_HOT_FOLDER")]
    hot_folder: Option<PathBuf>,
    /// Address for the web UI and API, e.g. 127.0.0.1:8080. Overrides web.listen.
    #[arg(long, env = "RIAC_LISTEN")]
    listen: Option<String>,
    /// Log format: human or json. Overrides log.format.
    #[arg(long, env = "RIAC_LOG_FORMAT")]
    log_format: Option<String>,
    /// The central RIAC's MQTT broker, mqtts://host:port (or mqtt://host:port where
    /// uplink.allow_plain = true). Overrides uplink.broker.
    #[arg(long, env = "RIAC_BROKER")]
    broker: Option<String>,
}

impl NodeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            hot_folder: self.hot_folder.clone(),
            listen: self.listen.clone(),
            log_format: self.log_format.clone(),
            broker: self.broker.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon.
    Run {
        /// Config file.
        #[arg(long, short, env = "RIAC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run the whole node on embedded defaults in a temp dir, fed by the simulator.
    Demo {
        #[command(flatten)]
        node: NodeArgs,
        /// Seconds between simulated scans.
        #[arg(long, default_value_t = 4.0)]
        interval_secs: f64,
        /// Simulated image resolution (1.0 = a real scanner's ~5 mm pixels).
        #[arg(long, default_value_t = 0.5)]
        resolution_scale: f64,
        /// Keep the temp data dir when the demo stops.
        #[arg(long)]
        keep: bool,
    },
    /// Write synthetic scanner drops (the scan drop contract) or post them to a node.
    Simulate {
        /// Folder to write drops into (a node's hot folder, or any folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Post each drop to this node instead, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        post: Option<String>,
        /// API token of a scanner (or admin) account for --post (`riac-node user token`).
        #[arg(long, env = "RIAC_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Number of scans (with --transit-pairs: number of entry/exit pairs).
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Write transit entry/exit pairs with ground truth under <out>/truth/.
        #[arg(long)]
        transit_pairs: bool,
        /// Fraction of transit pairs whose cargo is tampered with between entry and exit.
        #[arg(long, default_value_t = 0.3)]
        tamper_rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Image format: tiff, png or pgm.
        #[arg(long, default_value = "tiff")]
        format: String,
        /// 1.0 = a real scanner's resolution; smaller is faster.
        #[arg(long, default_value_t = 1.0)]
        resolution_scale: f64,
        /// Only trucks carrying this goods class (an HS code the simulator knows, e.g.
        /// 2202.10), declared truthfully; not with --transit-pairs.
        #[arg(long)]
        goods: Option<String>,
        /// Scanner families (`riac-node bench compare --help` lists them): one for single
        /// scans (with --goods too: a model's training set from chosen scanners), ENTRY,EXIT
        /// for --transit-pairs. Default: the demo site's scanners.
        #[arg(long, value_delimiter = ',')]
        families: Vec<String>,
    },
    /// Self-check for field engineers: config, directories, disk, database, clock, port,
    /// hot folder, model (checksum), broker (TCP, TLS, MQTT CONNECT). Exit 1 on a failure.
    Doctor {
        #[arg(long, short, env = "RIAC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Manage operator accounts (users, roles, API tokens) in a node's database.
    User {
        /// The node's data directory (holds riac-node.db).
        #[arg(long, env = "RIAC_DATA_DIR", default_value = riac_node::config::DEFAULT_DATA_DIR, global = true)]
        data_dir: PathBuf,
        #[command(subcommand)]
        what: UserWhat,
    },
    /// Keep a scan's images from retention (an admin pin, audited).
    Pin(PinArgs),
    /// Release an admin pin: retention may evict the scan unless another rule keeps it.
    Unpin(PinArgs),
    /// Export the evidence about scans (images, verdicts with signatures and chain proofs,
    /// operator decisions, audit lines) into a zip with a manifest signed by the node key.
    Export(ExportArgs),
    /// Check an evidence export offline: manifest signature, every file's sha256 and size,
    /// every verdict's signature and chain links. Exit 1 naming every failing file/verdict.
    VerifyExport {
        /// The export zip.
        file: PathBuf,
        /// The node's public key (64 hex characters, or a file holding it); without it the
        /// key inside the zip is used, which proves integrity but not origin.
        #[arg(long)]
        pubkey: Option<String>,
    },
    /// Check a config file and print the effective configuration.
    ValidateConfig { file: PathBuf },
    /// The node's Ed25519 signing key.
    Keys {
        #[command(subcommand)]
        what: KeysWhat,
    },
    /// Check a stream of verdicts (one JSON per line, as the centre receives them) against
    /// a node's public key: gaps, reorders, bad signatures, altered fields. Exit 1 on any
    /// problem.
    VerifyChain {
        /// The node's public key: 64 hex characters, or a file holding it (hex or PEM).
        #[arg(long)]
        pubkey: String,
        /// The verdicts file, or - for standard input.
        file: String,
        /// The seq the stream should start at.
        #[arg(long, default_value_t = 1)]
        first_seq: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The reference library of manifest matching (scans of known goods).
    Library {
        #[command(subcommand)]
        what: LibraryWhat,
    },
    /// Run the manifest and empty-container checks on one drop against a data dir's
    /// library, without a daemon; prints the verdict's `manifest` object with timings.
    Match {
        /// The drop's sidecar (`<scan_id>.json`; its image beside it).
        sidecar: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Include the per-tile embeddings in the JSON (to compare backends).
        #[arg(long, hide = true)]
        embeddings: bool,
    },
    /// Run the transit check on two scan drops (no daemon) and print the transit result.
    Compare {
        /// The entry scan's sidecar JSON (its image file beside it).
        entry: PathBuf,
        /// The exit scan's sidecar JSON.
        exit: PathBuf,
        /// Print JSON (the verdict's transit object, details and timings).
        #[arg(long)]
        json: bool,
        /// Write aligned.png (exit on the entry's geometry), heatmap.png and overview.png here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Take the [transit] thresholds and image limits from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Use this node data dir's scanner-pair calibration (without it: the uncalibrated
        /// defaults).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Calibrate a check on this site's own scans (docs/COMMISSIONING.md).
    Calibrate {
        #[command(subcommand)]
        what: CalibrateWhat,
    },
    /// Measure the node on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Args, Clone)]
struct KeyArgs {
    /// Config file whose uplink.node_key_file (or data dir) locates the key.
    #[arg(long, short, env = "RIAC_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory; the key is <data_dir>/keys/node.key. Overrides paths.data_dir.
    #[arg(long, env = "RIAC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The key file itself (overrides both).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysWhat {
    /// Create the node's signing key (mode 0600) and print its public key.
    Init {
        #[command(flatten)]
        at: KeyArgs,
        /// Replace an existing key. Verdicts signed with the old key still verify with the
        /// old public key; register the new one with the centre.
        #[arg(long)]
        force: bool,
    },
    /// Print the node's public key (hex), for the centre and `verify-chain --pubkey`.
    Show {
        #[command(flatten)]
        at: KeyArgs,
    },
}

#[derive(Subcommand)]
enum UserWhat {
    /// Create an account; the password is read from the terminal (or stdin's first line).
    Add {
        name: String,
        /// operator | supervisor | admin | scanner
        #[arg(long, default_value = "operator")]
        role: String,
    },
    /// Set a new password (read from the terminal or stdin); ends the user's sessions.
    Passwd { name: String },
    /// Disable an account: ends its sessions and revokes its API tokens.
    Disable { name: String },
    /// Re-enable a disabled account.
    Enable { name: String },
    /// Change an account's role.
    Role { name: String, role: String },
    /// Issue an API token for the account (printed once).
    Token {
        name: String,
        #[arg(long, default_value = "api")]
        label: String,
        /// The token stops working this many days from now (default: until revoked).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_days: Option<u32>,
    },
    /// List an account's API tokens (id, label, created, expiry, state; never the value).
    Tokens { name: String },
    /// Revoke one API token by the id `user tokens` shows.
    RevokeToken { id: String },
    /// List the accounts.
    List,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Data directory holding the library (riac-node.db). Default: the config's.
    #[arg(long, env = "RIAC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Config file to take [matching] and paths.data_dir from, if it exists.
    #[arg(long, short, env = "RIAC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Model contract (models/<name>.toml). Default: the config's matching.model, else
    /// the model of this source tree.
    #[arg(long)]
    model: Option<PathBuf>,
    /// ONNX backend: auto, tract or onnxruntime.
    #[arg(long)]
    backend: Option<String>,
    /// libonnxruntime.so for the onnxruntime backend (else ORT_DYLIB_PATH).
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LibraryWhat {
    /// Import the drops of a folder (scan drop contract; the declared HS code is the
    /// label). Idempotent: unchanged drops are skipped, changed ones replaced.
    Import {
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// List the references.
    List {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove references by id.
    Remove {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Write the model-input tiles of a folder of drops (training data for tools/).
    #[command(hide = true)]
    ExportTiles {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        tile: usize,
        #[arg(long, default_value_t = 32)]
        stride: usize,
        #[arg(long, default_value_t = 20.0)]
        pixel_mm: f32,
        /// The model contract's `normalisation` the tiles are cut for.
        #[arg(long, default_value = "attenuation-dark", value_parser = ["attenuation-dark", "attenuation"])]
        normalisation: String,
    },
}

#[derive(Subcommand)]
enum CalibrateWhat {
    /// Transit check: from drops of entry/exit pairs known to be unchanged, set each
    /// scanner pair's refer/alert limits for the target false-alarm rate and store them in
    /// the data dir.
    Transit {
        /// Folder of drops (sidecar JSON + image, the scan drop contract): transit entry
        /// and exit scans of the same declarations, known to be unchanged.
        pairs_dir: PathBuf,
        /// The node's data dir; the calibration goes to <data_dir>/transit-calibration.json.
        #[arg(long, env = "RIAC_DATA_DIR", default_value = riac_node::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Share of clean pairs allowed to be flagged (default: the config's
        /// transit.target_false_alarm_rate, 0.01).
        #[arg(long, value_parser = parse_far)]
        target_far: Option<f64>,
        /// Take the [transit] settings and image limits from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// `--families` names (comma-separated; `all` for every family).
fn parse_families(names: &[String]) -> Result<Vec<riac_node::sim::ScannerFamily>> {
    use riac_node::sim::ScannerFamily;
    if names.iter().any(|f| f == "all") {
        return Ok(ScannerFamily::ALL.to_vec());
    }
    names
        .iter()
        .map(|f| {
            f.parse::<ScannerFamily>()
                .map_err(|e| anyhow::anyhow!("--families: {e}"))
        })
        .collect()
}

fn parse_far(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; give a share such as 0.01"))?;
    if v > 0.0 && v <= 0.2 {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not in (0, 0.2]; give a share such as 0.01 (1%)"
        ))
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// What showing a 16-bit scan costs: server encoding and, with Chromium, the viewer.
    Viewer {
        #[arg(long, default_value_t = 4000)]
        width: u32,
        #[arg(long, default_value_t = 1400)]
        height: u32,
        /// Chromium binary for the client-side figures (default: Debian's).
        #[arg(long)]
        browser: Option<PathBuf>,
    },
    /// Decode + validate + store throughput of 16-bit TIFF scans.
    Ingest {
        #[arg(long, default_value_t = 40)]
        count: usize,
        #[arg(long, default_value_t = 4000)]
        width: u32,
        #[arg(long, default_value_t = 1400)]
        height: u32,
        /// Concurrent ingests (default: number of CPUs).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Outbox drain to a loopback mosquitto over TLS: verdicts/s, backlog drain time, memory.
    Uplink {
        /// Verdicts in the backlog.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// In-flight window (uplink.inflight).
        #[arg(long, default_value_t = 32)]
        inflight: u32,
        /// The mosquitto binary to start.
        #[arg(long, default_value = "mosquitto")]
        mosquitto: PathBuf,
    },
    /// Manifest matching: accuracy on simulator scans from unseen seeds, latency, RSS.
    Match {
        /// References per goods class.
        #[arg(long, default_value_t = 8)]
        per_class: usize,
        /// Test scans (from other seeds than the library's).
        #[arg(long, default_value_t = 300)]
        tests: usize,
        /// Share of test scans declared falsely.
        #[arg(long, default_value_t = 0.3)]
        false_rate: f64,
        /// Simulator resolution (1.0: ~4000-6000 px wide scans, as real scanners).
        #[arg(long, default_value_t = 1.0)]
        resolution_scale: f64,
        /// Library size for the search timing (tiles, made of copies of the real ones).
        #[arg(long, default_value_t = 100_000)]
        search_tiles: usize,
        /// Scans per backend for the latency of a 4000x1400 scan.
        #[arg(long, default_value_t = 20)]
        latency_scans: usize,
        /// Seed of the library; tests use seeds from seed + 1000.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[command(flatten)]
        model: ModelArgs,
        /// Internal: only measure latency with the given backend and print JSON.
        #[arg(long, hide = true)]
        latency_only: bool,
        /// Scanner families (comma-separated, `all` for every one): leave-one-family-out
        /// instead (the library from all but one family, the test scans from that one, in
        /// turn); --per-class and --tests are per fold.
        #[arg(long, value_delimiter = ',')]
        families: Vec<String>,
    },
    /// Transit check on simulator pairs: detection, false alarms, IoU, time per pair.
    Compare {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated resolution (1.0 = a real scanner's, ~4000-6000 x 1000-1150 pixels).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Share of tampered pairs.
        #[arg(long, default_value_t = 0.5)]
        tamper_rate: f64,
        /// Reduce each entry image by this factor first, as an entry package carries it.
        #[arg(long)]
        entry_reduction: Option<f64>,
        /// Also render the full-size aligned image and heatmap (timed).
        #[arg(long)]
        outputs: bool,
        /// Withhold the sidecars' pixel sizes (scales are then estimated from the images).
        #[arg(long)]
        no_pixel_mm: bool,
        /// Write the pairs the check got wrong into this folder (drops + truth).
        #[arg(long)]
        dump: Option<PathBuf>,
        /// One line per pair on stderr.
        #[arg(long)]
        verbose: bool,
        /// Take the [transit] thresholds from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Scanner families (comma-separated, `all` for every one; see
        /// `riac_node::sim::ScannerFamily`): run the
        /// cross-family protocol instead (each family entry once and exit once; each
        /// scanner pair calibrated on its own clean pairs); --pairs is then per
        /// combination.
        #[arg(long, value_delimiter = ',')]
        families: Vec<String>,
        /// Clean pairs each scanner pair is calibrated on (with --families).
        #[arg(long, default_value_t = 30)]
        calibration_pairs: usize,
        /// Target false-alarm rate of the calibration (with --families).
        #[arg(long, default_value_t = 0.01, value_parser = parse_far)]
        target_far: f64,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIAC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.init(),
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
        token.cancel();
    });
}

#[derive(clap::Args)]
struct PinArgs {
    /// The node's data directory (holds riac-node.db).
    #[arg(long, env = "RIAC_DATA_DIR", default_value = riac_node::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Why (recorded in the audit line).
    #[arg(long)]
    note: Option<String>,
    scan_id: String,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["scan", "container", "declaration"])))]
struct ExportArgs {
    /// One scan by id.
    #[arg(long)]
    scan: Option<String>,
    /// Every scan of this container id.
    #[arg(long)]
    container: Option<String>,
    /// Every scan of this declaration number.
    #[arg(long)]
    declaration: Option<String>,
    /// The zip to write (written to a temp file beside it, then renamed).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    at: KeyArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        limit_malloc_arenas();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async_main(cli))
}

/// Two malloc arenas for the daemon, as the systemd unit sets with `MALLOC_ARENA_MAX=2`, so
/// that `run` by hand and `demo` behave like the installed node: glibc gives busy threads
/// their own arenas and keeps their freed memory (a soak's RSS stayed at 69-112 MiB with two
/// arenas against 240-290 MiB without). Called before any thread starts; an explicit
/// `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn async_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config, node } => run(&config, &node).await,
        Command::Demo {
            node,
            interval_secs,
            resolution_scale,
            keep,
        } => demo(node, interval_secs, resolution_scale, keep).await,
        Command::Simulate {
            out,
            post,
            token,
            count,
            transit_pairs,
            tamper_rate,
            seed,
            format,
            resolution_scale,
            goods,
            families,
        } => {
            let format = match format.as_str() {
                "tiff" => SimImageFormat::Tiff,
                "png" => SimImageFormat::Png,
                "pgm" => SimImageFormat::Pgm,
                other => bail!("--format {other:?}: expected tiff, png or pgm"),
            };
            if !(0.0..=1.0).contains(&tamper_rate) {
                bail!("--tamper-rate {tamper_rate}: expected a fraction from 0 to 1");
            }
            if !(0.05..=2.0).contains(&resolution_scale) {
                bail!("--resolution-scale {resolution_scale}: expected 0.05 to 2");
            }
            let opts = SimOptions {
                seed,
                tamper_rate,
                resolution_scale,
                format,
                ..SimOptions::default()
            };
            if let Some(code) = &goods {
                if transit_pairs {
                    bail!("--goods and --transit-pairs cannot be combined");
                }
                if !riac_node::sim::goods_classes()
                    .iter()
                    .any(|c| c.hs_code == code)
                {
                    let known: Vec<&str> = riac_node::sim::goods_classes()
                        .iter()
                        .map(|c| c.hs_code)
                        .collect();
                    bail!("--goods {code:?}: the simulator knows {}", known.join(", "));
                }
            }
            let families = parse_families(&families)?;
            let want = if transit_pairs { 2 } else { 1 };
            if !families.is_empty() && families.len() != want {
                bail!("--families: give one family for single scans (with or without --goods), or ENTRY,EXIT with --transit-pairs");
            }
            let kind = match (goods, families.as_slice(), transit_pairs) {
                (Some(code), f, _) => SimKind::Goods(code, f.first().copied()),
                (None, [e, x], true) => SimKind::FamilyPairs(*e, *x),
                (None, _, true) => SimKind::Pairs,
                (None, [f], false) => SimKind::Family(*f),
                (None, _, false) => SimKind::Drops,
            };
            simulate(opts, out, post, token, count, kind).await
        }
        Command::User { data_dir, what } => {
            use riac_node::web::accounts::{cli, UserCommand};
            let cmd = match what {
                UserWhat::Add { name, role } => UserCommand::Add {
                    username: name,
                    role,
                },
                UserWhat::Passwd { name } => UserCommand::Passwd { username: name },
                UserWhat::Disable { name } => UserCommand::Disable { username: name },
                UserWhat::Enable { name } => UserCommand::Enable { username: name },
                UserWhat::Role { name, role } => UserCommand::Role {
                    username: name,
                    role,
                },
                UserWhat::Token {
                    name,
                    label,
                    expires_days,
                } => UserCommand::Token {
                    username: name,
                    label,
                    expires_days,
                },
                UserWhat::Tokens { name } => UserCommand::Tokens { username: name },
                UserWhat::RevokeToken { id } => UserCommand::RevokeToken { id },
                UserWhat::List => UserCommand::List,
            };
            println!("{}", cli(&data_dir, cmd).await?);
            Ok(())
        }
        Command::Pin(a) => {
            let msg = riac_node::retention::pin_cli(&a.data_dir, &a.scan_id, true, a.note).await?;
            println!("{msg}");
            Ok(())
        }
        Command::Unpin(a) => {
            let msg = riac_node::retention::pin_cli(&a.data_dir, &a.scan_id, false, a.note).await?;
            println!("{msg}");
            Ok(())
        }
        Command::Export(a) => {
            use riac_node::export::Selection;
            let sel = match (a.scan, a.container, a.declaration) {
                (Some(s), _, _) => Selection::Scan(s),
                (_, Some(c), _) => Selection::Container(c),
                (_, _, Some(d)) => Selection::Declaration(d),
                _ => unreachable!("clap requires one selection"),
            };
            let key_file = key_path(&a.at)?;
            let ov = Overrides {
                data_dir: a.at.data_dir.clone(),
                ..Default::default()
            };
            let data_dir = match &a.at.config {
                Some(c) => Config::load(c, &ov)?,
                None => Config::defaults(&ov)?,
            }
            .data_dir;
            let s = riac_node::export::export_cli(&data_dir, &key_file, sel, &a.out).await?;
            let shown = match s.scans.len() {
                n if n <= 5 => s.scans.join(", "),
                n => format!("{}, ... and {} more", s.scans[..3].join(", "), n - 3),
            };
            println!(
                "wrote {}: {} scan(s) ({shown}), {} file(s), {} bytes before compression",
                s.out.display(),
                s.scans.len(),
                s.files,
                s.bytes
            );
            for id in &s.evicted {
                println!("note: scan {id} was evicted by retention: its image files are not in the export (the manifest says so)");
            }
            Ok(())
        }
        Command::VerifyExport { file, pubkey } => {
            let key = pubkey
                .as_deref()
                .map(riac_node::uplink::keys::load_public_key_arg)
                .transpose()?;
            let report = riac_node::export::verify(&file, key)?;
            print!("{}", report.render());
            if !report.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ValidateConfig { file } => validate_config(&file),
        Command::Doctor { config, node } => {
            let checks = riac_node::doctor::run(&config, &node.overrides());
            if !riac_node::doctor::print(&checks) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Keys { what } => keys(what),
        Command::VerifyChain {
            pubkey,
            file,
            first_seq,
            json,
        } => {
            // Exit 1 means "problems found" (verify_chain exits itself); 2 means "could not check".
            if let Err(e) = verify_chain(&pubkey, &file, first_seq, json) {
                eprintln!("Error: {e:#}");
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Library { what } => library(what).await,
        Command::Match {
            sidecar,
            model,
            json,
            embeddings,
        } => match_one(&sidecar, &model, json, embeddings).await,
        Command::Compare {
            entry,
            exit,
            json,
            out,
            config,
            data_dir,
        } => {
            let cfg = config_or_defaults(config.as_deref())?;
            let calibration = match &data_dir {
                Some(d) => Some(riac_node::compare::calibrate::CalibrationSet::load(d)?),
                None => None,
            };
            let text = tokio::task::spawn_blocking(move || {
                riac_node::compare::cli::run(
                    &entry,
                    &exit,
                    json,
                    out.as_deref(),
                    &cfg.transit.thresholds,
                    &cfg.ingest.limits,
                    calibration.as_ref(),
                )
            })
            .await??;
            println!("{text}");
            Ok(())
        }
        Command::Calibrate {
            what:
                CalibrateWhat::Transit {
                    pairs_dir,
                    data_dir,
                    target_far,
                    config,
                    json,
                },
        } => {
            let cfg = config_or_defaults(config.as_deref())?;
            let far = target_far.unwrap_or(cfg.transit.target_false_alarm_rate);
            let text = tokio::task::spawn_blocking(move || {
                riac_node::compare::cli::calibrate_dir(
                    &pairs_dir,
                    &data_dir,
                    &cfg.transit.thresholds,
                    far,
                    &cfg.ingest.limits,
                    json,
                )
            })
            .await??;
            print!("{text}");
            Ok(())
        }
        Command::Bench { what } => match what {
            BenchWhat::Viewer {
                width,
                height,
                browser,
            } => {
                let r = riac_node::web::bench::viewer(width, height, browser).await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            BenchWhat::Ingest {
                count,
                width,
                height,
                workers,
            } => {
                let workers = workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                let r = riac_node::bench::ingest(count, width, height, workers).await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            BenchWhat::Uplink {
                count,
                inflight,
                mosquitto,
            } => {
                let r = riac_node::uplink::bench::drain(count, inflight, &mosquitto).await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            BenchWhat::Match {
                per_class,
                tests,
                false_rate,
                resolution_scale,
                search_tiles,
                latency_scans,
                seed,
                model,
                latency_only,
                families,
            } => {
                let families = parse_families(&families)?;
                if families.len() == 1 {
                    bail!("--families: give at least two families (one is left out of the library in turn), or `all`");
                }
                let (contract, backend, ort) = model_choice(&model)?;
                let params = if model.config.is_file() {
                    Config::load(&model.config, &Overrides::default())?
                        .matching
                        .params
                } else {
                    riac_node::matching::CheckParams::default()
                };
                let opts = riac_node::matching::bench::Options {
                    params,
                    contract,
                    backend,
                    ort_library: ort,
                    per_class,
                    tests,
                    false_rate,
                    resolution_scale,
                    search_tiles,
                    latency_scans,
                    seed,
                    fold: None,
                };
                if !families.is_empty() {
                    let r = riac_node::matching::bench::run_families(&opts, &families).await?;
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else if latency_only {
                    let r = riac_node::matching::bench::latency_only(&opts).await?;
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    let r = riac_node::matching::bench::run(&opts).await?;
                    println!("{}", serde_json::to_string_pretty(&r)?);
                }
                Ok(())
            }
            BenchWhat::Compare {
                pairs,
                seed,
                scale,
                tamper_rate,
                entry_reduction,
                outputs,
                no_pixel_mm,
                dump,
                verbose,
                config,
                families,
                calibration_pairs,
                target_far,
            } => {
                if !(0.05..=2.0).contains(&scale) {
                    bail!("--scale {scale}: expected 0.05 to 2");
                }
                if !(0.0..=1.0).contains(&tamper_rate) {
                    bail!("--tamper-rate {tamper_rate}: expected a fraction from 0 to 1");
                }
                if let Some(f) = entry_reduction {
                    if !(f > 0.05 && f <= 1.0) {
                        bail!("--entry-reduction {f}: expected more than 0.05 and at most 1");
                    }
                }
                let cfg = config_or_defaults(config.as_deref())?;
                if !families.is_empty() {
                    let families = parse_families(&families)?;
                    if families.len() < 2 {
                        bail!("--families: give at least two families (entry and exit differ), or `all`");
                    }
                    let args = riac_node::compare::bench::FamilyArgs {
                        families,
                        pairs,
                        calibration_pairs,
                        seed,
                        scale,
                        tamper_rate,
                        target_far,
                        verbose,
                    };
                    let th = cfg.transit.thresholds.clone();
                    let r = tokio::task::spawn_blocking(move || {
                        riac_node::compare::bench::run_families(&args, &th)
                    })
                    .await?;
                    println!("{}", serde_json::to_string_pretty(&r)?);
                    return Ok(());
                }
                let args = riac_node::compare::bench::BenchArgs {
                    pairs,
                    seed,
                    scale,
                    tamper_rate,
                    entry_reduction,
                    outputs,
                    no_pixel_mm,
                    dump,
                    verbose,
                };
                let r = tokio::task::spawn_blocking(move || {
                    riac_node::compare::bench::run(&args, &cfg.transit.thresholds)
                })
                .await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
        },
    }
}

async fn run(config: &Path, node: &NodeArgs) -> Result<()> {
    let raw = RawConfig::load(config)?;
    if raw.node.node_id.is_none() || raw.node.site_id.is_none() {
        bail!(
            "config file {}: keys `node.node_id` and `node.site_id` are required for `run` (they name this node in verdicts and MQTT topics); see firmware-config/riac-node.toml",
            config.display()
        );
    }
    let cfg = Config::from_raw(raw, &node.overrides())?;
    init_logging(cfg.log_format, &cfg.log_level);
    let token = CancellationToken::new();
    spawn_signal_handler(token.clone());
    let node = riac_node::start(cfg, token).await?;
    node.run_until_stopped().await;
    Ok(())
}

fn key_path(at: &KeyArgs) -> Result<PathBuf> {
    if let Some(k) = &at.key_file {
        return Ok(k.clone());
    }
    let ov = Overrides {
        data_dir: at.data_dir.clone(),
        ..Default::default()
    };
    let cfg = match &at.config {
        Some(c) => Config::load(c, &ov)?,
        None => Config::defaults(&ov)?,
    };
    Ok(cfg.uplink.node_key_file)
}

fn keys(what: KeysWhat) -> Result<()> {
    use riac_node::uplink::keys::NodeKey;
    match what {
        KeysWhat::Init { at, force } => {
            let path = key_path(&at)?;
            let key = NodeKey::create(&path, force)?;
            println!("created {} (mode 0600)", path.display());
            println!("public key: {}", key.public_hex());
            println!("register this public key with the central RIAC; back up the key file");
        }
        KeysWhat::Show { at } => {
            let path = key_path(&at)?;
            println!("{}", NodeKey::load(&path)?.public_hex());
        }
    }
    Ok(())
}

fn verify_chain(pubkey: &str, file: &str, first_seq: u64, json: bool) -> Result<()> {
    use riac_node::uplink::verify::verify_stream;
    let key = riac_node::uplink::keys::load_public_key_arg(pubkey)?;
    let report = if file == "-" {
        verify_stream(std::io::stdin().lock(), &key, first_seq).context("reading standard input")?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {file}"))?;
        verify_stream(std::io::BufReader::new(f), &key, first_seq)
            .with_context(|| format!("reading {file}"))?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// The config at `path`, or the embedded defaults (for the offline tools).
fn config_or_defaults(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p, &Overrides::default())?,
        None => Config::defaults(&Overrides::default())?,
    })
}

fn validate_config(file: &Path) -> Result<()> {
    let cfg = Config::load(file, &Overrides::default())?;
    println!("{} is valid.", file.display());
    println!("node {} at site {}", cfg.node_id, cfg.site_id);
    println!(
        "data dir {}, hot folder {}",
        cfg.data_dir.display(),
        cfg.hot_folder.display()
    );
    println!("web on {}", cfg.listen);
    match &cfg.uplink.broker {
        None => println!("no broker: the node works offline, the outbox keeps every verdict"),
        Some(b) => {
            // The files the section names are read here, as at start.
            b.load_tls()?;
            b.credentials()?;
            println!(
                "uplink to {} as client {} ({})",
                b.url,
                b.client_id,
                if b.tls {
                    "TLS"
                } else {
                    "plain TCP, allowed by uplink.allow_plain"
                }
            );
        }
    }
    println!("node key file {}", cfg.uplink.node_key_file.display());
    Ok(())
}

/// The model contract, backend and ONNX Runtime library for a CLI command: flags first,
/// then the config file's [matching] (when the file exists), then the bundled model.
fn model_choice(
    a: &ModelArgs,
) -> Result<(PathBuf, riac_node::matching::BackendChoice, Option<PathBuf>)> {
    use riac_node::matching::BackendChoice;
    let cfg = if a.config.is_file() {
        Some(Config::load(&a.config, &Overrides::default())?)
    } else {
        None
    };
    let contract = a
        .model
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.matching.model.clone()))
        .unwrap_or_else(riac_node::matching::bundled_model);
    let backend = match &a.backend {
        Some(b) => BackendChoice::parse(b)
            .with_context(|| format!("--backend {b:?}: expected auto, tract or onnxruntime"))?,
        None => cfg
            .as_ref()
            .map_or(BackendChoice::Auto, |c| c.matching.backend),
    };
    let ort = a
        .ort_library
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.matching.ort_library.clone()));
    Ok((contract, backend, ort))
}

fn cli_data_dir(a: &ModelArgs) -> Result<PathBuf> {
    if let Some(d) = &a.data_dir {
        return Ok(d.clone());
    }
    if a.config.is_file() {
        return Ok(Config::load(&a.config, &Overrides::default())?.data_dir);
    }
    Ok(PathBuf::from(riac_node::config::DEFAULT_DATA_DIR))
}

async fn open_store(data_dir: &Path) -> Result<riac_node::store::Store> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    let db = riac_node::config::db_in(data_dir);
    let store = tokio::task::spawn_blocking(move || riac_node::store::Store::open(&db))
        .await
        .context("opening the database")??;
    Ok(store)
}

async fn load_model(a: &ModelArgs) -> Result<riac_node::matching::EmbeddingModel> {
    let (contract, backend, ort) = model_choice(a)?;
    let m = tokio::task::spawn_blocking(move || {
        let b = riac_node::matching::resolve_backend(backend, ort.as_deref())?;
        riac_node::matching::EmbeddingModel::load(&contract, b)
    })
    .await
    .context("loading the model")??;
    Ok(m)
}

async fn library(what: LibraryWhat) -> Result<()> {
    use riac_node::matching::cli;
    match what {
        LibraryWhat::Import { dir, model } => {
            let data_dir = cli_data_dir(&model)?;
            let m = std::sync::Arc::new(load_model(&model).await?);
            let store = open_store(&data_dir).await?;
            let r = cli::import_dir(&store, &data_dir, m, &dir).await;
            store.close().await;
            let r = r?;
            for (file, why) in &r.skipped {
                eprintln!("skipped {file}: {why}");
            }
            println!(
                "library {}: {} added, {} replaced, {} unchanged, {} skipped",
                data_dir.display(),
                r.added.len(),
                r.replaced.len(),
                r.unchanged.len(),
                r.skipped.len()
            );
            Ok(())
        }
        LibraryWhat::List { model, json } => {
            let data_dir = cli_data_dir(&model)?;
            let store = open_store(&data_dir).await?;
            let refs = cli::list(&store).await;
            store.close().await;
            let refs = refs?;
            if json {
                println!("{}", serde_json::to_string_pretty(&refs)?);
            } else {
                for r in &refs {
                    println!(
                        "{}\t{}\t{} tiles\tfill {:.2}\t{}",
                        r.reference_id,
                        r.hs_code,
                        r.tile_count,
                        r.fill,
                        r.description.as_deref().unwrap_or("")
                    );
                }
                println!("{} reference(s) in {}", refs.len(), data_dir.display());
            }
            Ok(())
        }
        LibraryWhat::Remove { ids, model } => {
            let data_dir = cli_data_dir(&model)?;
            let store = open_store(&data_dir).await?;
            let missing = cli::remove(&store, &data_dir, &ids).await;
            store.close().await;
            let missing = missing?;
            println!("removed {}", ids.len() - missing.len());
            if !missing.is_empty() {
                bail!("not in the library: {}", missing.join(", "));
            }
            Ok(())
        }
        LibraryWhat::ExportTiles {
            dir,
            out,
            tile,
            stride,
            pixel_mm,
            normalisation,
        } => {
            let p = riac_node::matching::Preproc {
                pixel_mm,
                tile,
                stride,
                clip: [0.0, 8.0],
                dark_level: normalisation == riac_node::matching::model::NORMALISATION_DARK,
            };
            let n = tokio::task::spawn_blocking(move || cli::export_tiles(&dir, &out, &p))
                .await
                .context("exporting tiles")??;
            println!("{n} tiles");
            Ok(())
        }
    }
}

async fn match_one(sidecar: &Path, a: &ModelArgs, json: bool, embeddings: bool) -> Result<()> {
    let data_dir = cli_data_dir(a)?;
    if !riac_node::config::db_in(&data_dir).is_file() {
        bail!(
            "{} has no riac-node.db: give the data dir that holds the library (--data-dir), or import references first with `riac-node library import DIR --data-dir DIR`",
            data_dir.display()
        );
    }
    let model = load_model(a).await?;
    let store = open_store(&data_dir).await?;
    let cfg_params = if a.config.is_file() {
        Config::load(&a.config, &Overrides::default())?
            .matching
            .params
    } else {
        riac_node::matching::CheckParams::default()
    };
    let matcher = riac_node::matching::Matcher::new(model, cfg_params, store.clone());
    let sc = sidecar.to_path_buf();
    let r = tokio::task::spawn_blocking(move || {
        riac_node::matching::cli::match_drop(&matcher, &sc, embeddings)
    })
    .await
    .context("matching")?;
    store.close().await;
    let out = r?;
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let m = &out.manifest;
    println!("scan {}: {}", out.scan_id, out.outcome.as_str());
    println!(
        "manifest: {:?} (confidence {}), declared {}",
        m.status,
        m.confidence.map_or("-".into(), |c| format!("{c:.2}")),
        m.declared_hs_codes.join(", ")
    );
    if let Some(r) = &m.reason {
        println!("  {r}");
    }
    if let Some(e) = &m.empty {
        println!(
            "empty check: {:?}, fill {}",
            e.status,
            e.fill.map_or("-".into(), |f| format!("{:.1}%", f * 100.0))
        );
    }
    for t in &m.top_matches {
        println!(
            "  {:.4}  {}  {}",
            t.score,
            t.hs_code,
            t.reference_id.as_deref().unwrap_or("")
        );
    }
    println!(
        "model {} {} ({}), library {} references / {} tiles; {:.0} ms (embed {:.0}, search {:.0})",
        out.model.name,
        out.model.version,
        out.backend,
        out.library.references,
        out.library.tiles,
        out.timings_ms.total_ms,
        out.timings_ms.prepare_and_embed_ms,
        out.timings_ms.search_ms
    );
    Ok(())
}

async fn demo(node: NodeArgs, interval_secs: f64, resolution_scale: f64, keep: bool) -> Result<()> {
    if !(interval_secs > 0.05 && interval_secs < 3600.0) {
        bail!("--interval-secs {interval_secs}: expected more than 0.05 and less than 3600");
    }
    let tmp = tempfile::Builder::new()
        .prefix("riac-demo-")
        .tempdir()
        .context("creating the demo's temp dir")?;
    let mut ov = node.overrides();
    ov.data_dir = ov.data_dir.or_else(|| Some(tmp.path().to_path_buf()));
    ov.listen = ov.listen.or_else(|| Some("127.0.0.1:8080".into()));
    // A demo broker is usually a local test one: plain mqtt:// is allowed here.
    let mut raw = RawConfig::default();
    raw.uplink.allow_plain = Some(true);
    // ... and so are unsigned commands: a demo has no centre key. The status page says so.
    raw.uplink.allow_unsigned_commands = Some(true);
    raw.node.node_id = Some("demo-node".into());
    raw.node.site_id = Some("KHI".into());
    let mut cfg = Config::from_raw(raw, &ov)?;
    cfg.ingest.settle = Duration::from_millis(300);
    let bundled = riac_node::matching::bundled_model();
    let with_model = bundled.is_file();
    if with_model {
        cfg.matching.model = Some(bundled);
    }
    init_logging(cfg.log_format, &cfg.log_level);
    let hot = cfg.hot_folder.clone();
    let data_dir = cfg.data_dir.clone();

    let token = CancellationToken::new();
    spawn_signal_handler(token.clone());
    let node = riac_node::start(cfg, token.clone()).await?;
    let (demo_user, demo_password) =
        riac_node::web::accounts::ensure_demo_account(&node.store).await?;
    let scheme = if node.config.web.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // One write, errors ignored: a closed stdout (a pipe whose reader left) must not stop the demo.
    let banner = format!(
        "\n  riac-node demo is running: {scheme}://{}/\n  log in as:  {demo_user} / {demo_password}  (admin; a new password each run)\n  data dir:   {}\n  hot folder: {} (the simulator drops a scan every {interval_secs}s)\n  stop with Ctrl-C\n\n",
        node.addr,
        data_dir.display(),
        hot.display()
    );
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|_| out.flush());
    }
    if with_model {
        // A reference library of simulator scans, so the manifest check has something to
        // compare with; every third demo scan is then declared as the wrong goods.
        let t0 = std::time::Instant::now();
        let model = load_model(&ModelArgs {
            data_dir: None,
            config: PathBuf::from("/nonexistent"),
            model: None,
            backend: Some("tract".into()),
            ort_library: None,
        })
        .await?;
        let r = riac_node::matching::cli::seed_from_simulator(
            &node.store,
            &data_dir,
            std::sync::Arc::new(model),
            &riac_node::matching::cli::DEMO_CLASSES,
            2,
            // References need not be as sharp as the demo scans: the model works at 20 mm.
            resolution_scale.min(0.35),
            4242,
        )
        .await?;
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "  reference library: {} simulator scans of {} goods classes ({:.1}s)\n",
            r.added.len() + r.unchanged.len(),
            riac_node::matching::cli::DEMO_CLASSES.len(),
            t0.elapsed().as_secs_f64()
        );
    }

    let sim_token = token.clone();
    let feeder = tokio::spawn(async move {
        let mut sim = Simulator::new(SimOptions {
            seed: std::process::id() as u64,
            resolution_scale,
            ..SimOptions::default()
        });
        let mut tick = tokio::time::interval(Duration::from_secs_f64(interval_secs));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = sim_token.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            let hot = hot.clone();
            let make_pair = n % 4 == 0;
            let (s, r) = tokio::task::spawn_blocking(move || {
                let r = if make_pair {
                    let p = sim.next_transit_pair();
                    p.entry.write_to(&hot).and_then(|_| p.exit.write_to(&hot))
                } else if with_model {
                    riac_node::matching::cli::demo_drop(&mut sim, n).write_to(&hot)
                } else {
                    sim.next_drop().write_to(&hot)
                };
                (sim, r)
            })
            .await
            .expect("simulator task");
            sim = s;
            if let Err(e) = r {
                tracing::error!(error = %e, "simulator cannot write into the hot folder");
            }
        }
    });
    node.run_until_stopped().await;
    let _ = feeder.await;
    if keep {
        let kept = tmp.keep();
        println!("demo data kept in {}", kept.display());
    }
    Ok(())
}

/// What `simulate` writes.
enum SimKind {
    Drops,
    /// One goods class, on the default scanners or on one family's.
    Goods(String, Option<riac_node::sim::ScannerFamily>),
    Pairs,
    Family(riac_node::sim::ScannerFamily),
    FamilyPairs(riac_node::sim::ScannerFamily, riac_node::sim::ScannerFamily),
}

async fn simulate(
    opts: SimOptions,
    out: Option<PathBuf>,
    post: Option<String>,
    token: Option<String>,
    count: usize,
    kind: SimKind,
) -> Result<()> {
    if out.is_none() && post.is_none() {
        bail!("give --out DIR (write drops) or --post URL (send them to a node)");
    }
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let client = reqwest::Client::new();
    let mut sim = Simulator::new(opts);
    for _ in 0..count {
        let (single, pair) = tokio::task::block_in_place(|| match &kind {
            SimKind::Goods(code, f) => (sim.next_drop_of_class_with(code, *f), None),
            SimKind::FamilyPairs(e, x) => (None, Some(sim.next_transit_pair_with(*e, *x))),
            SimKind::Pairs => (None, Some(sim.next_transit_pair())),
            SimKind::Family(f) => (Some(sim.next_drop_with(*f)), None),
            SimKind::Drops => (Some(sim.next_drop()), None),
        });
        // The truth first, so it is in place before the exit drop can be picked up.
        if let (Some(dir), Some(pair)) = (&out, &pair) {
            pair.write_truth(dir)
                .with_context(|| format!("writing ground truth into {}", dir.display()))?;
        }
        let drops: Vec<&SimDrop> = match (&single, &pair) {
            (Some(d), _) => vec![d],
            (None, Some(p)) => vec![&p.entry, &p.exit],
            (None, None) => bail!("the simulator could not load a truck with the asked goods"),
        };
        for d in drops {
            if let Some(dir) = &out {
                tokio::task::block_in_place(|| d.write_to(dir))
                    .with_context(|| format!("writing {} into {}", d.scan_id, dir.display()))?;
            }
            if let Some(url) = &post {
                post_drop(&client, url, token.as_deref(), d).await?;
            }
            println!("{}", d.scan_id);
        }
    }
    Ok(())
}

async fn post_drop(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    d: &SimDrop,
) -> Result<()> {
    let url = format!("{}/api/v1/scans", base.trim_end_matches('/'));
    let form = reqwest::multipart::Form::new()
        .part(
            "sidecar",
            reqwest::multipart::Part::bytes(serde_json::to_vec(&d.sidecar)?)
                .file_name("sidecar.json"),
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(d.encode_image()).file_name(d.image_file.clone()),
        );
    let mut req = client.post(&url).multipart(form);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        bail!(
            "{url} answered {status}: uploads need the API token of a scanner or admin account; \
             give --token or RIAC_API_TOKEN (make one with `riac-node user token NAME`)"
        );
    }
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("{url} answered {status} for {}: {body}", d.scan_id);
    }
    Ok(())
}
