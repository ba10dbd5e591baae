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
}

impl NodeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            hot_folder: self.hot_folder.clone(),
            listen: self.listen.clone(),
            log_format: self.log_format.clone(),
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
    },
    /// Check a config file and print the effective configuration.
    ValidateConfig { file: PathBuf },
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
    },
    /// Measure the node on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
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
            count,
            transit_pairs,
            tamper_rate,
            seed,
            format,
            resolution_scale,
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
            simulate(opts, out, post, count, transit_pairs).await
        }
        Command::ValidateConfig { file } => validate_config(&file),
        Command::Compare {
            entry,
            exit,
            json,
            out,
            config,
        } => {
            let cfg = config_or_defaults(config.as_deref())?;
            let text = tokio::task::spawn_blocking(move || {
                riac_node::compare::cli::run(
                    &entry,
                    &exit,
                    json,
                    out.as_deref(),
                    &cfg.transit.thresholds,
                    &cfg.ingest.limits,
                )
            })
            .await??;
            println!("{text}");
            Ok(())
        }
        Command::Bench { what } => match what {
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
    let mut cfg = Config::defaults(&ov)?;
    cfg.node_id = "demo-node".into();
    cfg.site_id = "KHI".into();
    cfg.ingest.settle = Duration::from_millis(300);
    init_logging(cfg.log_format, &cfg.log_level);
    let hot = cfg.hot_folder.clone();
    let data_dir = cfg.data_dir.clone();

    let token = CancellationToken::new();
    spawn_signal_handler(token.clone());
    let node = riac_node::start(cfg, token.clone()).await?;
    println!();
    println!("  riac-node demo is running: http://{}/", node.addr);
    println!("  data dir:   {}", data_dir.display());
    println!(
        "  hot folder: {} (the simulator drops a scan every {interval_secs}s)",
        hot.display()
    );
    println!("  stop with Ctrl-C");
    println!();

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

async fn simulate(
    opts: SimOptions,
    out: Option<PathBuf>,
    post: Option<String>,
    count: usize,
    pairs: bool,
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
        let (single, pair) = tokio::task::block_in_place(|| {
            if pairs {
                (None, Some(sim.next_transit_pair()))
            } else {
                (Some(sim.next_drop()), None)
            }
        });
        // The truth first, so it is in place before the exit drop can be picked up.
        if let (Some(dir), Some(pair)) = (&out, &pair) {
            pair.write_truth(dir)
                .with_context(|| format!("writing ground truth into {}", dir.display()))?;
        }
        let drops: Vec<&SimDrop> = match (&single, &pair) {
            (Some(d), _) => vec![d],
            (None, Some(p)) => vec![&p.entry, &p.exit],
            (None, None) => unreachable!("one of the two is made"),
        };
        for d in drops {
            if let Some(dir) = &out {
                tokio::task::block_in_place(|| d.write_to(dir))
                    .with_context(|| format!("writing {} into {}", d.scan_id, dir.display()))?;
            }
            if let Some(url) = &post {
                post_drop(&client, url, d).await?;
            }
            println!("{}", d.scan_id);
        }
    }
    Ok(())
}

async fn post_drop(client: &reqwest::Client, base: &str, d: &SimDrop) -> Result<()> {
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
    let resp = client
        .post(&url)
        .multipart(form)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("{url} answered {status} for {}: {body}", d.scan_id);
    }
    Ok(())
}
