//! The MQTT uplink against real brokers: mosquitto (a process started per test on free
//! loopback ports, TLS with client certificates from a throwaway CA) and rumqttd
//! (in-process). Store-and-forward across broker outages, node crashes and broker restarts;
//! entry packages between two nodes; signed verdict chains checked by `verify-chain`;
//! commands from the centre, malformed ones included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riac_node::config::{Config, Overrides, RawConfig};
use riac_node::store::chain::{signing_bytes, Canonicalization, Signing};
use riac_node::store::Store;
use riac_node::uplink::bench::{fill_backlog, fill_backlog_with, free_port, Mosquitto, TestPki};
use riac_node::uplink::config::RawUplink;
use riac_node::uplink::keys::NodeKey;
use riac_node::uplink::status::ConnState;
use riac_node::uplink::verify::verify_stream;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RIAC_TEST_MOSQUITTO") {
        return p.into();
    }
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!("mosquitto not found: install Debian's `mosquitto` package (.ci/run does) or set RIAC_TEST_MOSQUITTO");
}

fn broker(dir: &Path) -> (Mosquitto, TestPki) {
    let pki = TestPki::create(&dir.join("pki"), "riac-node").unwrap();
    let m = Mosquitto::start(&mosquitto_bin(), &dir.join("broker"), &pki).unwrap();
    (m, pki)
}

/// The uplink section for a TLS broker with client certificates, fast reconnects.
fn tls_uplink(url: &str, pki: &TestPki) -> RawUplink {
    RawUplink {
        broker: Some(url.to_string()),
        tls_ca_file: Some(pki.ca.clone()),
        tls_cert_file: Some(pki.client_cert.clone()),
        tls_key_file: Some(pki.client_key.clone()),
        reconnect_min_ms: Some(100),
        reconnect_max_secs: Some(1),
        keep_alive_secs: Some(5),
        // Test brokers have no centre key; the tests that sign commands set one.
        allow_unsigned_commands: Some(true),
        ..Default::default()
    }
}

/// A test node's config (as `common::test_config`) with identity and an uplink section.
fn node_config(dir: &Path, node_id: &str, site_id: &str, uplink: RawUplink) -> Config {
    let mut raw = RawConfig::default();
    raw.node.node_id = Some(node_id.into());
    raw.node.site_id = Some(site_id.into());
    raw.uplink = uplink;
    let mut cfg = Config::from_raw(
        raw,
        &Overrides {
            data_dir: Some(dir.join("data")),
            hot_folder: Some(dir.join("hot")),
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        },
    )
    .unwrap();
    cfg.ingest.settle = Duration::from_millis(150);
    cfg.ingest.rescan = Duration::from_secs(1);
    cfg.shutdown_deadline = Duration::from_secs(10);
    cfg
}

/// (topic, payload) of every message a test subscriber received, in arrival order.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A test client on the broker's plain listener, recording every message it receives.
struct Sub {
    client: AsyncClient,
    msgs: Received,
    stop: CancellationToken,
}

impl Sub {
    /// Connects (persistent session when `!clean`), subscribes to `filters` at QoS 1 and
    /// returns once the broker has acknowledged the subscription.
    async fn start(port: u16, id: &str, filters: &[&str], clean: bool) -> Sub {
        Sub::start_as(port, id, None, filters, clean).await
    }

    async fn start_as(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
        filters: &[&str],
        clean: bool,
    ) -> Sub {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(clean)
            .set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let msgs: Received = Arc::default();
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        {
            let (client, msgs, stop) = (client.clone(), msgs.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    let ev = tokio::select! {
                        _ = stop.cancelled() => break,
                        ev = el.poll() => ev,
                    };
                    match ev {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            for f in &filters {
                                client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                            }
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            msgs.lock()
                                .unwrap()
                                .push((p.topic.clone(), p.payload.to_vec()));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("test subscriber: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .expect("test subscriber not subscribed within 20 s")
            .unwrap();
        Sub { client, msgs, stop }
    }

    fn on(&self, suffix: &str) -> Vec<Vec<u8>> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with(suffix))
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn json_on(&self, suffix: &str) -> Vec<serde_json::Value> {
        self.on(suffix)
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Seqs of the verdicts received, in arrival order.
fn seqs(sub: &Sub) -> Vec<u64> {
    sub.json_on("/verdicts")
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

fn distinct(seqs: &[u64]) -> usize {
    seqs.iter().collect::<std::collections::BTreeSet<_>>().len()
}

async fn wait_for<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outbox_by_kind(c: &rusqlite::Connection) -> BTreeMap<String, i64> {
    let mut st = c
        .prepare("SELECT kind, count(*) FROM outbox GROUP BY kind")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Checks the received verdict stream with verify-chain's own logic.
fn assert_chain_ok(sub: &Sub, key: &NodeKey, n: u64) {
    let lines: Vec<u8> = sub
        .on("/verdicts")
        .into_iter()
        .flat_map(|mut p| {
            p.push(b'\n');
            p
        })
        .collect();
    let report = verify_stream(lines.as_slice(), &key.verifying_key(), 1).unwrap();
    assert!(report.ok(), "{}", report.render());
    assert_eq!(report.verdicts as u64, n, "{}", report.render());
}

/// Opens the node's database (creating it) and makes the node's key file, as a node that
/// has been running would have them.
async fn open_store_and_key(cfg: &Config) -> (Store, Arc<NodeKey>) {
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let db = cfg.db_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .unwrap()
        .unwrap();
    let key = Arc::new(NodeKey::create(&cfg.uplink.node_key_file, false).unwrap());
    (store, key)
}

/// Opens the node's database (creating it) and fills it with a backlog of signed verdicts,
/// made with the node's own key file.
async fn prefill(cfg: &Config, n: usize) -> Arc<NodeKey> {
    let (store, key) = open_store_and_key(cfg).await;
    fill_backlog(&store, &key, &cfg.node_id, &cfg.site_id, n)
        .await
        .unwrap();
    store.close().await;
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_made_while_the_broker_is_down_all_arrive_in_order_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, pki) = broker(dir.path());
    // The centre's subscriber has a persistent session, as the centre would.
    let sub = Sub::start(
        broker.plain_port,
        "centre-1",
        &["riac/v1/+/+/verdicts", "riac/v1/+/+/status"],
        false,
    )
    .await;
    drop(sub);
    broker.stop();

    let cfg = node_config(
        dir.path(),
        "KHI-N1",
        "KHI",
        tls_uplink(&broker.tls_url(), &pki),
    );
    let mut node = TestNode::start_with(cfg).await;
    std::fs::create_dir_all(&node.hot).unwrap();
    const N: i64 = 100;
    let mut sim = riac_node::sim::Simulator::new(riac_node::sim::SimOptions {
        seed: 501,
        resolution_scale: 0.06,
        ..Default::default()
    });
    for _ in 0..N {
        sim.next_drop().write_to(&node.hot).unwrap();
    }
    let store = node.node.as_ref().unwrap().store.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM verdicts", [], |r| r.get(0))?))
            .await
            .unwrap();
        if v == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {v} verdicts after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Offline: everything waits in the outbox, and the node says so.
    let kinds = store.read(|c| Ok(outbox_by_kind(c))).await.unwrap();
    assert_eq!(kinds.get("verdict"), Some(&N), "{kinds:?}");
    let (status, api) = node.get_json("/api/v1/uplink").await;
    assert_eq!(status, 200);
    assert_eq!(api["state"], "disconnected", "{api}");
    assert!(
        api["last_error"].as_str().unwrap().contains("network"),
        "{api}"
    );
    assert_eq!(api["outbox"]["verdicts"], N);
    assert!(
        api["outbox"]["oldest_unsent_verdict_age_secs"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(api["last_puback_at"].is_null());

    broker.restart().unwrap();
    let sub = Sub::start(
        broker.plain_port,
        "centre-1",
        &["riac/v1/+/+/verdicts", "riac/v1/+/+/status"],
        false,
    )
    .await;
    wait_for(
        Duration::from_secs(60),
        "100 verdicts at the centre",
        || distinct(&seqs(&sub)) == N as usize,
    )
    .await;
    let got = seqs(&sub);
    // In seq order, each at least once (a resend after a reconnect may repeat some).
    let mut first_seen = Vec::new();
    for s in &got {
        if !first_seen.contains(s) {
            first_seen.push(*s);
        }
    }
    assert_eq!(first_seen, (1..=N as u64).collect::<Vec<_>>());
    assert_chain_ok(&sub, &node.node.as_ref().unwrap().node_key, N as u64);
    let ids: std::collections::BTreeSet<String> = sub
        .json_on("/verdicts")
        .iter()
        .map(|v| v["verdict_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), N as usize);

    // Only PUBACKs empty the outbox; the status says connected, with a PUBACK time.
    wait_for(Duration::from_secs(30), "outbox without verdicts", || {
        let s = node.node.as_ref().unwrap().uplink.status();
        s.outbox.verdicts == 0 && s.state == ConnState::Connected
    })
    .await;
    let (_, api) = node.get_json("/api/v1/uplink").await;
    assert_eq!(api["outbox"]["verdicts"], 0, "{api}");
    assert!(api["last_puback_at"].is_string(), "{api}");
    assert!(api["outbox"]["oldest_unsent_verdict_at"].is_null(), "{api}");
    let metrics = node.get_text("/metrics").await;
    assert!(metrics.contains("riac_uplink_connected 1"), "{metrics}");
    assert!(
        metrics.contains("riac_uplink_acknowledged_total"),
        "{metrics}"
    );
    // The retained status is online, with the node's public key.
    let status_msgs = sub.json_on("/status");
    let last = status_msgs.last().expect("a status message");
    assert_eq!(last["state"], "online");
    assert_eq!(
        last["public_key"],
        node.node.as_ref().unwrap().node_key.public_hex()
    );

    // A clean stop leaves `offline` retained (not the LWT's "connection lost").
    node.stop().await;
    wait_for(Duration::from_secs(10), "offline status", || {
        sub.json_on("/status")
            .last()
            .is_some_and(|v| v["state"] == "offline" && v["reason"] == "shutdown")
    })
    .await;
}

#[test]
fn kill_9_in_the_middle_of_a_drain_loses_no_verdict() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = broker(dir.path());
    let sub = rt.block_on(Sub::start(
        broker.plain_port,
        "centre-k9",
        &[
            "riac/v1/KHI/test-daemon/verdicts",
            "riac/v1/KHI/test-daemon/status",
        ],
        false,
    ));

    // The daemon's own config file, with a slow drain so the kill lands mid-way.
    let cfg_path = write_daemon_config(dir.path());
    let mut text = std::fs::read_to_string(&cfg_path).unwrap();
    text.push_str(&format!(
        "[uplink]\nbroker = \"{}\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ninflight = 1\nreconnect_min_ms = 100\nreconnect_max_secs = 1\nallow_unsigned_commands = true\n",
        broker.tls_url(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ));
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = riac_node::config::Config::load(&cfg_path, &Overrides::default()).unwrap();
    const N: usize = 1500;
    let key = rt.block_on(prefill(&cfg, N));

    let mut daemon = Daemon::spawn(&cfg_path);
    rt.block_on(wait_for(
        Duration::from_secs(60),
        "the drain to start",
        || distinct(&seqs(&sub)) >= 100,
    ));
    daemon.kill9();
    // The broker tells the centre with the node's last will.
    let start = Instant::now();
    while !sub
        .json_on("/status")
        .last()
        .is_some_and(|v| v["state"] == "offline" && v["reason"] == "connection lost")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no LWT; status messages: {:?}, topics {:?}\ndaemon log: {:?}\nbroker log: {}",
            sub.json_on("/status"),
            sub.msgs
                .lock()
                .unwrap()
                .iter()
                .map(|(t, _)| t.clone())
                .collect::<std::collections::BTreeSet<_>>(),
            daemon
                .stderr_lines
                .try_iter()
                .filter(|l| !l.contains("scan"))
                .collect::<Vec<_>>(),
            std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left_at_kill = db_counts(&open_db(&cfg.data_dir)).2;
    assert!(
        left_at_kill > 0 && (left_at_kill as usize) < N,
        "the kill did not land mid-drain ({left_at_kill} of {N} left); the test proves nothing"
    );

    let mut daemon = Daemon::spawn(&cfg_path);
    rt.block_on(wait_for(
        Duration::from_secs(120),
        "every verdict at the centre",
        || distinct(&seqs(&sub)) == N,
    ));
    let start = Instant::now();
    while db_counts(&open_db(&cfg.data_dir)).2 != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "outbox not emptied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        daemon
            .terminate(Duration::from_secs(20))
            .map(|s| s.success()),
        Some(true)
    );
    assert_chain_ok(&sub, &key, N as u64);
    drop(sub);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_reconnects_by_itself_after_a_broker_restart_mid_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, pki) = broker(dir.path());
    let sub = Sub::start(
        broker.plain_port,
        "centre-r",
        &["riac/v1/+/+/verdicts"],
        false,
    )
    .await;
    let mut up = tls_uplink(&broker.tls_url(), &pki);
    up.inflight = Some(2);
    let cfg = node_config(dir.path(), "KHI-N2", "KHI", up);
    const N: usize = 1500;
    let key = prefill(&cfg, N).await;
    let mut node = TestNode::start_with(cfg).await;
    wait_for(Duration::from_secs(60), "the drain to start", || {
        distinct(&seqs(&sub)) >= 200
    })
    .await;
    broker.stop();
    let store = node.node.as_ref().unwrap().store.clone();
    let left_at_stop: i64 = store
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM outbox WHERE kind = 'verdict'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart().unwrap();
    let start = Instant::now();
    while distinct(&seqs(&sub)) != N {
        if start.elapsed() > Duration::from_secs(60) {
            let got: std::collections::BTreeSet<u64> = seqs(&sub).into_iter().collect();
            let missing: Vec<u64> = (1..=N as u64)
                .filter(|s| !got.contains(s))
                .take(20)
                .collect();
            let log = std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default();
            panic!(
                "after the restart: {} of {N} verdicts at the centre, first missing {missing:?}\nnode: {:?}\nbroker log tail:\n{}",
                got.len(),
                node.node.as_ref().unwrap().uplink.status(),
                log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = node.node.as_ref().unwrap().uplink.status();
    assert!(s.reconnects >= 1, "{s:?}");
    assert!(
        left_at_stop > 0,
        "the broker stopped after the drain; the test proves nothing"
    );
    wait_for(Duration::from_secs(30), "empty outbox", || {
        node.node.as_ref().unwrap().uplink.status().outbox.depth == 0
    })
    .await;
    assert_chain_ok(&sub, &key, N as u64);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_node_offline_when_the_entry_package_is_sent_gets_it_later() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, pki) = broker(dir.path());
    let exit_dir = dir.path().join("exit");
    let entry_dir = dir.path().join("entry");

    // The exit node has been connected before (the broker keeps its session), then stops.
    let exit_cfg = || {
        node_config(
            &exit_dir,
            "TKM-N1",
            "TKM",
            tls_uplink(&broker.tls_url(), &pki),
        )
    };
    let mut exit = TestNode::start_with(exit_cfg()).await;
    wait_for(Duration::from_secs(20), "exit node subscribed", || {
        exit.node.as_ref().unwrap().uplink.status().subscribed
    })
    .await;
    exit.stop().await;

    let mut entry = TestNode::start_with(node_config(
        &entry_dir,
        "KHI-N1",
        "KHI",
        tls_uplink(&broker.tls_url(), &pki),
    ))
    .await;
    std::fs::create_dir_all(&entry.hot).unwrap();
    let pair = sim(77).next_transit_pair();
    assert_eq!(pair.entry.sidecar["declaration"]["exit_site"], "TKM");
    pair.entry.write_to(&entry.hot).unwrap();
    let entry_store = entry.node.as_ref().unwrap().store.clone();
    let entry_id = pair.entry.scan_id.clone();
    let start = Instant::now();
    loop {
        let id = entry_id.clone();
        let state: Option<String> = entry_store
            .read(move |c| {
                Ok(rusqlite::OptionalExtension::optional(c.query_row(
                    "SELECT state FROM entry_outgoing WHERE scan_id = ?1",
                    [id],
                    |r| r.get(0),
                ))?)
            })
            .await
            .unwrap();
        if state.as_deref() == Some("sent") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "entry package state {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    entry.stop().await;

    // The exit node comes back: the broker delivers the package queued for its session.
    let mut exit = TestNode::start_with(exit_cfg()).await;
    // The broker may deliver the package before the test can subscribe to the pairing
    // signal (the node connects during start); the stored package is what pairing uses
    // either way, and the signal is checked whenever the test was in time for it.
    let mut signal = exit.node.as_ref().unwrap().uplink.subscribe_entries();
    wait_for(Duration::from_secs(60), "entry package received", || {
        exit.node
            .as_ref()
            .unwrap()
            .uplink
            .status()
            .entry_packages
            .received
            == 1
    })
    .await;
    if let Ok(got) = signal.try_recv() {
        assert_eq!(got, entry_id);
    }
    let store = exit.node.as_ref().unwrap().store.clone();
    let decl = pair.exit.sidecar["declaration"]["number"]
        .as_str()
        .unwrap()
        .to_string();
    let containers: Vec<String> = pair.exit.sidecar["container_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let rec = store
        .read(move |c| riac_node::store::entries::find_for_exit(c, &decl, &containers))
        .await
        .unwrap()
        .expect("the package is found for the exit scan");
    assert_eq!(rec.package.entry_scan_id, entry_id);
    assert_eq!(rec.package.origin_site, "KHI");
    assert_eq!(rec.image_path, format!("entries/{entry_id}/image.png"));
    let png = std::fs::read(exit.data.join(&rec.image_path)).unwrap();
    let img = riac_node::imaging::decode_png16(&png).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (rec.package.image_width, rec.package.image_height)
    );
    let (w, h) = (pair.entry.image.width(), pair.entry.image.height());
    assert_eq!(rec.package.reduction, 0.5);
    assert_eq!(img.width(), (f64::from(w) * 0.5).round() as u32);
    assert_eq!(img.height(), (f64::from(h) * 0.5).round() as u32);
    assert_eq!(
        exit.node
            .as_ref()
            .unwrap()
            .uplink
            .status()
            .entry_packages
            .received,
        1
    );
    exit.stop().await;
}

fn cli(args: &[&str], input: Option<&[u8]>) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(i) = input {
        stdin.write_all(i).unwrap();
    }
    drop(stdin);
    // A command that should fail at once must not hang the suite if it does not.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done_tx.send(());
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_verify_chain_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let (code, out) = cli(&["keys", "init", "--data-dir", d], None);
    assert_eq!(code, 0, "{out}");
    let (code, again) = cli(&["keys", "init", "--data-dir", d], None);
    assert!(code != 0 && again.contains("already exists"), "{again}");
    let (code, pubkey) = cli(&["keys", "show", "--data-dir", d], None);
    assert_eq!(code, 0);
    let pubkey = pubkey.trim().to_string();
    assert!(out.contains(&pubkey));
    let key_path = data.join("keys/node.key");
    let key = Arc::new(NodeKey::load(&key_path).unwrap());

    // A chain made by the node's own code, exactly as published.
    let store = Store::open(&data.join("riac-node.db")).unwrap();
    fill_backlog(&store, &key, "KHI-N1", "KHI", 8)
        .await
        .unwrap();
    let bodies: Vec<String> = store
        .read(|c| {
            let mut st = c.prepare("SELECT payload FROM outbox ORDER BY id")?;
            let v = st
                .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                .map(|r| r.map(|b| String::from_utf8(b).unwrap()))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
        .await
        .unwrap();
    store.close().await;
    let join = |v: &[String]| v.join("\n").into_bytes();

    let mut dup = bodies.clone();
    dup.extend_from_slice(&bodies[4..]);
    let (code, out) = cli(
        &["verify-chain", "--pubkey", &pubkey, "-"],
        Some(&join(&dup)),
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK") && out.contains("4 exact duplicates"),
        "{out}"
    );
    // The key may be given as the .pub file too.
    let file = dir.path().join("verdicts.jsonl");
    std::fs::write(&file, join(&bodies)).unwrap();
    let pub_file = data.join("keys/node.pub");
    let (code, out) = cli(
        &[
            "verify-chain",
            "--pubkey",
            pub_file.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}");

    // Cannot check at all: exit 2, not 1.
    let (code, out) = cli(
        &["verify-chain", "--pubkey", &pubkey, "/nonexistent.jsonl"],
        None,
    );
    assert_eq!(code, 2, "{out}");
    let (code, out) = cli(&["verify-chain", "--pubkey", "abc", "-"], Some(b""));
    assert!(code == 2 && out.contains("--pubkey"), "{out}");

    // A tampered verdict.
    let mut tampered = bodies.clone();
    assert!(tampered[2].contains("\"outcome\":\"refer\""));
    tampered[2] = tampered[2].replace("\"outcome\":\"refer\"", "\"outcome\":\"clear\"");
    let (code, out) = cli(
        &["verify-chain", "--pubkey", &pubkey, "-"],
        Some(&join(&tampered)),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[bad_signature]") && out.contains("seq 3") && out.contains("[broken_link]"),
        "{out}"
    );

    // A missing seq.
    let mut gap = bodies.clone();
    gap.remove(5);
    let (code, out) = cli(
        &["verify-chain", "--pubkey", &pubkey, "-"],
        Some(&join(&gap)),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[gap]") && out.contains("seq 6 was never received"),
        "{out}"
    );

    // A signature by another key over the same content.
    let other = NodeKey::generate(&dir.path().join("x")).unwrap();
    let mut forged = bodies.clone();
    let mut v: serde_json::Value = serde_json::from_str(&forged[1]).unwrap();
    let mut unsigned = v.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    let bytes = signing_bytes(unsigned.as_object().unwrap(), Canonicalization::Rfc8785).unwrap();
    v["signature"] = other.sign_hex(&bytes).into();
    forged[1] = v.to_string();
    let (code, out) = cli(
        &["verify-chain", "--pubkey", &pubkey, "--json", "-"],
        Some(&join(&forged)),
    );
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["bad_signature"], "{out}");

    // No key file on a node that has signed verdicts: refuse rather than make a new key.
    let cfg_path = write_daemon_config(dir.path());
    let moved = dir.path().join("node.key.bak");
    std::fs::rename(&key_path, &moved).unwrap();
    let (code, out) = cli(
        &[
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(
        code != 0 && out.contains("does not exist") && out.contains("keys init"),
        "{out}"
    );
    std::fs::rename(&moved, &key_path).unwrap();

    // The node refuses a key file others may read, naming the file and the fix.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let cfg_path = write_daemon_config(dir.path());
    let (code, out) = cli(
        &[
            "run",
            "--config",
            cfg_path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(
        code != 0 && out.contains("node.key") && out.contains("chmod 600"),
        "{out}"
    );
    // And a TLS file that is not there, naming the key.
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&cfg_path).unwrap();
    text.push_str(
        "[uplink]\nbroker = \"mqtts://127.0.0.1:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\nallow_unsigned_commands = true\n",
    );
    std::fs::write(&cfg_path, text).unwrap();
    let (code, out) = cli(&["validate-config", cfg_path.to_str().unwrap()], None);
    assert!(
        code != 0 && out.contains("uplink.tls_ca_file") && out.contains("/nonexistent/ca.pem"),
        "{out}"
    );
}

/// rumqttd in-process, plain TCP on a free port, users `riac` / `s3cret` and `centre` /
/// `c3ntre`. rumqttd has no shutdown: the broker thread ends with the test binary.
fn rumqttd_broker() -> u16 {
    let port = free_port().unwrap();
    let cfg = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20971520
    max_inflight_count = 100
    dynamic_filters = true
    [v4.1.connections.auth]
    riac = "s3cret"
    centre = "c3ntre"
"#
    );
    let config: rumqttd::Config = toml::from_str(&cfg).unwrap();
    std::thread::spawn(move || {
        let mut b = rumqttd::Broker::new(config);
        let _ = b.start();
    });
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rumqttd did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_and_bad_ones_never_hurt_the_node() {
    use riac_node::uplink::commands::{CentreRequest, CommandKind};
    let dir = tempfile::tempdir().unwrap();
    let port = rumqttd_broker();
    let centre = NodeKey::generate(&dir.path().join("centre.key")).unwrap();
    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let up = RawUplink {
        broker: Some(format!("mqtt://127.0.0.1:{port}")),
        allow_plain: Some(true),
        username: Some("riac".into()),
        password_file: Some(password_file),
        command_max_kb: Some(64),
        image_chunk_kb: Some(16),
        centre_public_key: Some(centre.public_hex()),
        reconnect_min_ms: Some(100),
        reconnect_max_secs: Some(1),
        ..Default::default()
    };
    let mut node = TestNode::start_with(node_config(dir.path(), "KHI-N3", "KHI", up)).await;
    std::fs::create_dir_all(&node.hot).unwrap();
    let handle = node.node.as_ref().unwrap().uplink.clone();
    wait_for(Duration::from_secs(20), "node subscribed", || {
        handle.status().subscribed
    })
    .await;
    let sub = Sub::start_as(
        port,
        "centre-cmd",
        Some(("centre", "c3ntre")),
        &[
            "riac/v1/KHI/KHI-N3/cmd-reply",
            "riac/v1/KHI/KHI-N3/image",
            "riac/v1/KHI/KHI-N3/verdicts",
        ],
        true,
    )
    .await;
    let cmd = |name: &str| format!("riac/v1/KHI/KHI-N3/cmd/{name}");
    let at = |offset_secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // Signed commands carry an expiry (required with a centre key): an hour from now. They
    // name RFC 8785 as their canonicalisation, as a centre in any language would.
    let signed_as = |name: &str,
                     id: &str,
                     args: serde_json::Value,
                     expires: Option<String>,
                     canon: Canonicalization| {
        let mut v = serde_json::json!({"command_id": id, "node_id": "KHI-N3", "name": name, "issued_at": at(-60), "args": args});
        if let Some(e) = expires {
            v["expires_at"] = e.into();
        }
        if canon == Canonicalization::Rfc8785 {
            v["signing"] = serde_json::to_value(Signing::rfc8785_ed25519()).unwrap();
        }
        let sig = centre.sign_hex(&signing_bytes(v.as_object().unwrap(), canon).unwrap());
        v["signature"] = sig.into();
        serde_json::to_vec(&v).unwrap()
    };
    let signed_with = |name: &str, id: &str, args: serde_json::Value, expires: Option<String>| {
        signed_as(name, id, args, expires, Canonicalization::Rfc8785)
    };
    let signed =
        |name: &str, id: &str, args: serde_json::Value| signed_with(name, id, args, Some(at(3600)));
    let replies = |sub: &Sub| sub.json_on("/cmd-reply");
    let reply_for = |sub: &Sub, id: &str| {
        replies(sub)
            .into_iter()
            .filter(|r| r["command_id"] == id)
            .collect::<Vec<_>>()
    };
    async fn publish(sub: &Sub, topic: String, payload: Vec<u8>) {
        sub.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    // Malformed: not JSON, no command_id, oversized. Each gets an error reply.
    publish(&sub, cmd("thresholds"), b"{not json".to_vec()).await;
    publish(&sub, cmd("thresholds"), br#"{"args": {}}"#.to_vec()).await;
    publish(&sub, cmd("library-add"), vec![b'x'; 100 * 1024]).await;
    wait_for(Duration::from_secs(20), "three error replies", || {
        replies(&sub).len() >= 3
    })
    .await;
    let errs: Vec<String> = replies(&sub)
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], false, "{r}");
            assert!(r["command_id"].is_null(), "{r}");
            r["error"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(errs.iter().any(|e| e.contains("not JSON")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("command_id")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("102400 bytes") && e.contains("uplink.command_max_kb")),
        "{errs:?}"
    );

    // Unsigned, or signed for another node: refused (a centre key is configured).
    publish(
        &sub,
        cmd("thresholds"),
        br#"{"command_id": "c-unsigned", "args": {"transit": {"refer_score": 0.5}}}"#.to_vec(),
    )
    .await;
    let mut other_node = serde_json::json!({"command_id": "c-other", "node_id": "KHI-N9", "name": "thresholds", "args": {}});
    other_node["signature"] = centre
        .sign_hex(riac_node::store::chain::canonical_json(&other_node).as_bytes())
        .into();
    publish(
        &sub,
        cmd("thresholds"),
        serde_json::to_vec(&other_node).unwrap(),
    )
    .await;
    // Signed by another key.
    let impostor = NodeKey::generate(&dir.path().join("impostor.key")).unwrap();
    let mut forged = serde_json::json!({"command_id": "c-forged", "node_id": "KHI-N3", "name": "thresholds", "args": {"transit": {"refer_score": 0.5}}});
    forged["signature"] = impostor
        .sign_hex(riac_node::store::chain::canonical_json(&forged).as_bytes())
        .into();
    publish(
        &sub,
        cmd("thresholds"),
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    // Unknown command, invalid arguments, no handler yet.
    publish(
        &sub,
        cmd("self-destruct"),
        signed("self-destruct", "c-unknown", serde_json::json!({})),
    )
    .await;
    publish(
        &sub,
        cmd("thresholds"),
        signed(
            "thresholds",
            "c-range",
            serde_json::json!({"transit": {"refer_score": 7}}),
        ),
    )
    .await;
    publish(&sub, cmd("library-add"), signed("library-add", "c-hs", serde_json::json!({"items": [{"reference_id": "R1", "hs_code": "87", "image_png_base64": ""}]}))).await;
    publish(
        &sub,
        cmd("thresholds"),
        // A centre that predates RFC 8785: no `signing` member, sorted compact bytes.
        signed_as(
            "thresholds",
            "c-nohandler",
            serde_json::json!({"manifest": {"consistent_min": 0.6}}),
            Some(at(3600)),
            Canonicalization::SortedCompact,
        ),
    )
    .await;
    // Signed but without an expiry, or expired: refused, whatever the signature says.
    let refer = || serde_json::json!({"transit": {"refer_score": 0.5}});
    publish(
        &sub,
        cmd("thresholds"),
        signed_with("thresholds", "c-noexpiry", refer(), None),
    )
    .await;
    publish(
        &sub,
        cmd("thresholds"),
        signed_with("thresholds", "c-expired", refer(), Some(at(-1))),
    )
    .await;
    wait_for(Duration::from_secs(20), "nine more replies", || {
        replies(&sub).len() >= 12
    })
    .await;
    let err_of = |id: &str| {
        reply_for(&sub, id)[0]["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        err_of("c-noexpiry").contains("expires_at is required"),
        "{}",
        err_of("c-noexpiry")
    );
    assert!(
        err_of("c-expired").contains("expired"),
        "{}",
        err_of("c-expired")
    );
    assert!(
        err_of("c-unsigned").contains("signature"),
        "{}",
        err_of("c-unsigned")
    );
    assert!(
        err_of("c-other").contains("node_id"),
        "{}",
        err_of("c-other")
    );
    assert!(
        err_of("c-forged").contains("not signed by the centre key"),
        "{}",
        err_of("c-forged")
    );
    assert!(
        err_of("c-unknown").contains("unknown command")
            && err_of("c-unknown").contains("image-request")
    );
    assert!(
        err_of("c-range").contains("transit.refer_score"),
        "{}",
        err_of("c-range")
    );
    assert!(
        err_of("c-hs").contains("args.items[0].hs_code"),
        "{}",
        err_of("c-hs")
    );
    // The node's own handler refuses what it cannot apply: this node has no model.
    assert!(
        err_of("c-nohandler").contains("no embedding model is loaded"),
        "{}",
        err_of("c-nohandler")
    );

    // A registered handler gets the validated request and its answer goes back.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    handle.set_command_handler(CommandKind::Thresholds, tx);
    let calls = Arc::new(Mutex::new(0));
    {
        let calls = calls.clone();
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                *calls.lock().unwrap() += 1;
                let CentreRequest::Thresholds(t) = call.request else {
                    panic!("wrong request")
                };
                let score = t.transit.and_then(|t| t.refer_score).unwrap();
                let _ = call.reply.send(Ok(
                    serde_json::json!({"applied": {"transit.refer_score": score}}),
                ));
            }
        });
    }
    let ok_cmd = signed(
        "thresholds",
        "c-ok",
        serde_json::json!({"transit": {"refer_score": 0.42}}),
    );
    publish(&sub, cmd("thresholds"), ok_cmd.clone()).await;
    wait_for(Duration::from_secs(20), "c-ok reply", || {
        !reply_for(&sub, "c-ok").is_empty()
    })
    .await;
    let r = &reply_for(&sub, "c-ok")[0];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["applied"]["transit.refer_score"], 0.42);
    // The same command again: the same reply, not done twice.
    publish(&sub, cmd("thresholds"), ok_cmd).await;
    wait_for(Duration::from_secs(20), "repeated reply", || {
        reply_for(&sub, "c-ok").len() == 2
    })
    .await;
    assert_eq!(*calls.lock().unwrap(), 1);

    // The node still works: a scan gets its verdict and it reaches the centre.
    let d = sim(9).next_drop();
    let scan_id = d.scan_id.clone();
    d.write_to(&node.hot).unwrap();
    wait_for(Duration::from_secs(60), "the verdict at the centre", || {
        sub.json_on("/verdicts")
            .iter()
            .any(|v| v["scan_id"] == scan_id.as_str())
    })
    .await;

    // image-request: the full canonical image in chunks, then the reply.
    publish(
        &sub,
        cmd("image-request"),
        signed(
            "image-request",
            "c-img",
            serde_json::json!({"scan_id": scan_id}),
        ),
    )
    .await;
    publish(
        &sub,
        cmd("image-request"),
        signed(
            "image-request",
            "c-img404",
            serde_json::json!({"scan_id": "NOPE"}),
        ),
    )
    .await;
    wait_for(Duration::from_secs(30), "image reply", || {
        !reply_for(&sub, "c-img").is_empty()
    })
    .await;
    let r = &reply_for(&sub, "c-img")[0];
    assert_eq!(r["ok"], true, "{r}");
    let n = r["result"]["chunks"].as_u64().unwrap() as usize;
    assert!(n > 1, "a 16 KiB chunk size should split the image: {r}");
    let chunks = sub.json_on("/image");
    let mut mine: Vec<&serde_json::Value> = chunks
        .iter()
        .filter(|c| c["command_id"] == "c-img")
        .collect();
    assert_eq!(mine.len(), n, "every chunk arrived before the reply");
    mine.sort_by_key(|c| c["index"].as_u64());
    let mut bytes = Vec::new();
    use base64::Engine;
    for c in mine {
        bytes.extend(
            base64::engine::general_purpose::STANDARD
                .decode(c["data_base64"].as_str().unwrap())
                .unwrap(),
        );
    }
    assert_eq!(
        riac_node::store::chain::sha256_hex(&bytes),
        r["result"]["sha256"].as_str().unwrap()
    );
    let id = scan_id.clone();
    let rec = node
        .node
        .as_ref()
        .unwrap()
        .store
        .read(move |c| riac_node::store::scans::get(c, &id))
        .await
        .unwrap()
        .unwrap();
    let stored = std::fs::read(node.data.join(&rec.image_dir).join("image.png")).unwrap();
    assert_eq!(bytes, stored);
    wait_for(Duration::from_secs(20), "404 reply", || {
        !reply_for(&sub, "c-img404").is_empty()
    })
    .await;
    assert!(
        err_of("c-img404").contains("no scan"),
        "{}",
        err_of("c-img404")
    );

    let s = handle.status();
    assert_eq!(s.state, ConnState::Connected);
    assert!(s.commands.failed >= 11, "{s:?}");
    node.stop().await;

    // A wrong password: the node keeps running, says why, and keeps retrying.
    let dir2 = dir.path().join("wrong");
    let up = RawUplink {
        broker: Some(format!("mqtt://127.0.0.1:{port}")),
        allow_plain: Some(true),
        username: Some("riac".into()),
        password: Some("guess".into()),
        allow_unsigned_commands: Some(true),
        reconnect_min_ms: Some(100),
        reconnect_max_secs: Some(1),
        ..Default::default()
    };
    let mut wrong = TestNode::start_with(node_config(&dir2, "KHI-N5", "KHI", up)).await;
    let h = wrong.node.as_ref().unwrap().uplink.clone();
    wait_for(Duration::from_secs(20), "refusal reported", || {
        let s = h.status();
        // rumqttd drops the connection without a CONNACK code (mosquitto would answer
        // "not authorized", reported as refused and naming the credentials' keys).
        s.state == ConnState::Disconnected
            && s.last_error.is_some()
            && s.last_connected_at.is_none()
    })
    .await;
    let (code, _) = wrong.get_json("/healthz").await;
    assert_eq!(code, 200);
    wrong.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_entry_packages_wait_and_verdicts_are_still_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, pki) = broker(dir.path());
    broker.stop();
    let mut up = tls_uplink(&broker.tls_url(), &pki);
    up.outbox_quota_mb = Some(1);
    up.outbox_warn_percent = Some(50);
    let cfg = node_config(dir.path(), "KHI-N4", "KHI", up);
    // About 1.1 MB of signed verdicts waiting: over the 1 MB quota.
    prefill(&cfg, 1400).await;
    let mut node = TestNode::start_with(cfg).await;
    std::fs::create_dir_all(&node.hot).unwrap();
    let handle = node.node.as_ref().unwrap().uplink.clone();
    wait_for(Duration::from_secs(20), "over_quota", || {
        handle.status().outbox.alert == riac_node::uplink::status::QuotaAlert::OverQuota
    })
    .await;
    let (_, api) = node.get_json("/api/v1/uplink").await;
    assert_eq!(api["outbox"]["alert"], "over_quota", "{api}");
    assert!(
        api["outbox"]["used_fraction"].as_f64().unwrap() >= 1.0,
        "{api}"
    );
    let metrics = node.get_text("/metrics").await;
    assert!(metrics.contains("riac_uplink_outbox_alert 2"), "{metrics}");

    // A transit entry still gets its verdict; its package waits for space.
    let pair = sim(88).next_transit_pair();
    pair.entry.write_to(&node.hot).unwrap();
    let store = node.node.as_ref().unwrap().store.clone();
    let id = pair.entry.scan_id.clone();
    let state = |store: Store, id: String| async move {
        store
            .read(move |c| {
                Ok(rusqlite::OptionalExtension::optional(c.query_row(
                    "SELECT state FROM entry_outgoing WHERE scan_id = ?1",
                    [id],
                    |r| r.get::<_, String>(0),
                ))?)
            })
            .await
            .unwrap()
    };
    let start = Instant::now();
    while state(store.clone(), id.clone()).await.as_deref() != Some("deferred") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "package not deferred"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verdicts: i64 = store
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM outbox WHERE kind = 'verdict'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(verdicts, 1401, "every verdict is queued, quota or not");
    let (_, api) = node.get_json("/api/v1/uplink").await;
    assert_eq!(api["entry_packages"]["deferred"], 1, "{api}");

    // The broker comes back, the backlog drains, the package goes out.
    broker.restart().unwrap();
    let start = Instant::now();
    while state(store.clone(), id.clone()).await.as_deref() != Some("sent") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "deferred package never sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Duration::from_secs(20), "alert cleared", || {
        handle.status().outbox.alert == riac_node::uplink::status::QuotaAlert::Ok
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centre_thresholds_and_references_reach_the_checks_and_survive_a_restart() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let port = rumqttd_broker();
    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let make_cfg = || {
        let up = RawUplink {
            broker: Some(format!("mqtt://127.0.0.1:{port}")),
            allow_plain: Some(true),
            username: Some("riac".into()),
            password_file: Some(password_file.clone()),
            allow_unsigned_commands: Some(true),
            reconnect_min_ms: Some(100),
            reconnect_max_secs: Some(1),
            ..Default::default()
        };
        let mut cfg = node_config(dir.path(), "KHI-N7", "KHI", up);
        cfg.matching.model = Some(riac_node::matching::bundled_model());
        cfg
    };
    let mut node = TestNode::start_with(make_cfg()).await;
    let handle = node.node.as_ref().unwrap().uplink.clone();
    wait_for(Duration::from_secs(20), "node subscribed", || {
        handle.status().subscribed
    })
    .await;
    let sub = Sub::start_as(
        port,
        "centre-tune",
        Some(("centre", "c3ntre")),
        &["riac/v1/KHI/KHI-N7/cmd-reply"],
        true,
    )
    .await;
    let send = |name: &str, id: &str, args: serde_json::Value| {
        let topic = format!("riac/v1/KHI/KHI-N7/cmd/{name}");
        let payload =
            serde_json::to_vec(&serde_json::json!({"command_id": id, "args": args})).unwrap();
        let client = sub.client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    let reply = |id: &str| {
        sub.json_on("/cmd-reply")
            .into_iter()
            .find(|r| r["command_id"] == id)
    };

    // Contradictory thresholds are refused as a whole, and nothing changes.
    let before = node.node.as_ref().unwrap().transit.config().thresholds;
    send(
        "thresholds",
        "t-bad",
        serde_json::json!({"transit": {"refer_score": 0.5, "alert_score": 0.2}}),
    )
    .await;
    wait_for(Duration::from_secs(20), "t-bad reply", || {
        reply("t-bad").is_some()
    })
    .await;
    let r = reply("t-bad").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("alert_score"), "{r}");
    assert_eq!(
        node.node.as_ref().unwrap().transit.config().thresholds,
        before
    );

    // Good ones are applied to both checks and answered with what is now in force.
    send(
        "thresholds",
        "t-ok",
        serde_json::json!({"transit": {"refer_score": 0.42}, "manifest": {"consistent_min": 0.6}}),
    )
    .await;
    wait_for(Duration::from_secs(20), "t-ok reply", || {
        reply("t-ok").is_some()
    })
    .await;
    let r = reply("t-ok").unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["in_force"]["transit"]["refer_score"], 0.42);
    assert_eq!(r["result"]["in_force"]["manifest"]["consistent_min"], 0.6);
    assert_eq!(
        node.node
            .as_ref()
            .unwrap()
            .transit
            .config()
            .thresholds
            .refer_score,
        0.42
    );

    // A scanner pair's calibration: one the node's own file check would refuse is refused
    // naming the field, dropping a pair it does not have changes nothing, a good one is
    // put in force (marked as the centre's), read back, audited and shown on the status
    // page.
    let pair = |refer: f64| {
        serde_json::json!({
            "entry_scanner": "KHI-P1", "exit_scanner": "TKM-S2",
            "target_false_alarm_rate": 0.01, "refer_od_m2": refer, "alert_od_m2": 2.0,
            "pairs_used": 10, "pairs_inconclusive": 1,
            "null": {"share_with_candidates": 0.5, "log_mean": -1.6, "log_sd": 0.6,
                     "max_observed_od_m2": 0.4, "expected_false_alarm_rate": 0.004},
            "samples": [0.0, 0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.1, 0.2, 0.3],
            "calibrated_at": "2026-12-01T10:00:00Z", "source": "commissioning"
        })
    };
    send(
        "transit-calibration",
        "k-bad",
        serde_json::json!({"pairs": [pair(0.001)]}),
    )
    .await;
    send(
        "transit-calibration",
        "k-unknown",
        serde_json::json!({"remove": ["KHI-P9->TKM-S9"]}),
    )
    .await;
    send(
        "transit-calibration",
        "k-set",
        serde_json::json!({"pairs": [pair(0.9)]}),
    )
    .await;
    wait_for(Duration::from_secs(20), "k-set reply", || {
        reply("k-set").is_some()
    })
    .await;
    send("transit-calibration", "k-read", serde_json::json!({})).await;
    wait_for(Duration::from_secs(20), "k-read reply", || {
        reply("k-read").is_some()
    })
    .await;
    let r = reply("k-bad").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("args.pairs[0]") && e.contains("refer_od_m2"),
        "{r}"
    );
    let r = reply("k-unknown").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("KHI-P9->TKM-S9"),
        "{r}"
    );
    for id in ["k-set", "k-read"] {
        let r = reply(id).unwrap();
        assert_eq!(r["ok"], true, "{r}");
        let pairs = r["result"]["in_force"]["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 1, "{r}");
        assert_eq!(pairs[0]["refer_od_m2"], 0.9, "{r}");
        assert_eq!(pairs[0]["source"], "centre", "{r}");
    }
    // The command and its reply are what the published contract describes.
    let contracts = Contracts::load();
    contracts.assert_fits(
        "command.schema.json",
        &serde_json::json!({"command_id": "k-set", "name": "transit-calibration",
                            "args": {"pairs": [pair(0.9)], "remove": ["KHI-P2->TKM-S2"]}}),
    );
    assert!(!contracts
        .errors(
            "command.schema.json",
            &serde_json::json!({"command_id": "k-x", "name": "transit-calibration",
                                "args": {"pairs": [{"entry_scanner": "KHI-P1"}]}}),
        )
        .is_empty());
    contracts.assert_fits("cmd-reply.schema.json", &reply("k-set").unwrap());
    let in_force = node.node.as_ref().unwrap().transit.calibration();
    assert_eq!(in_force.get("KHI-P1", "TKM-S2").unwrap().refer_od_m2, 0.9);
    let audited: i64 = node
        .node
        .as_ref()
        .unwrap()
        .store
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM audit WHERE action = 'transit-calibration' AND actor = 'centre'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(audited, 1, "one audit entry for the one change");
    let (_, status) = node.get_json("/api/v1/status").await;
    assert_eq!(
        status["transit_calibration"][0]["pair"], "KHI-P1->TKM-S2",
        "{status}"
    );
    let page = node.get_text("/status").await;
    assert!(
        page.contains("KHI-P1-&gt;TKM-S2") || page.contains("KHI-P1->TKM-S2"),
        "the status page lists the calibrated pair"
    );

    // A reference item: embedded with the node's model and stored in its library.
    let mut s = riac_node::sim::Simulator::new(riac_node::sim::SimOptions {
        seed: 31,
        resolution_scale: 0.35,
        ..riac_node::sim::SimOptions::default()
    });
    let d = loop {
        let d = s.next_drop();
        if d.sidecar["declaration"]["goods"][0]["hs_code"].is_string() {
            break d;
        }
    };
    let hs = d.sidecar["declaration"]["goods"][0]["hs_code"]
        .as_str()
        .unwrap()
        .to_string();
    let png = riac_node::imaging::encode_png16(&d.image).unwrap();
    send(
        "library-add",
        "l-1",
        serde_json::json!({"items": [{
            "reference_id": "centre-ref-1",
            "hs_code": hs,
            "image_png_base64": base64::engine::general_purpose::STANDARD.encode(&png),
            "pixel_mm": d.sidecar["image"]["pixel_mm"],
        }]}),
    )
    .await;
    wait_for(Duration::from_secs(60), "l-1 reply", || {
        reply("l-1").is_some()
    })
    .await;
    let r = reply("l-1").unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["result"]["added"],
        serde_json::json!(["centre-ref-1"]),
        "{r}"
    );
    let refs = node
        .node
        .as_ref()
        .unwrap()
        .store
        .read(riac_node::matching::library::list)
        .await
        .unwrap();
    assert!(refs
        .iter()
        .any(|x| x.reference_id == "centre-ref-1" && x.hs_code == hs));
    node.stop().await;

    // After a restart the centre's thresholds and calibration are still in force; the
    // centre can drop the pair again.
    let mut node = TestNode::start_with(make_cfg()).await;
    let n = node.node.as_ref().unwrap();
    assert_eq!(n.transit.config().thresholds.refer_score, 0.42);
    let kept = n.transit.calibration();
    let p = kept.get("KHI-P1", "TKM-S2").expect("calibration kept");
    assert_eq!((p.refer_od_m2, p.source.as_str()), (0.9, "centre"));
    let handle = n.uplink.clone();
    wait_for(Duration::from_secs(20), "node subscribed again", || {
        handle.status().subscribed
    })
    .await;
    send(
        "transit-calibration",
        "k-rm",
        serde_json::json!({"remove": ["KHI-P1->TKM-S2"]}),
    )
    .await;
    wait_for(Duration::from_secs(20), "k-rm reply", || {
        reply("k-rm").is_some()
    })
    .await;
    let r = reply("k-rm").unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["in_force"]["pairs"], serde_json::json!([]));
    assert!(node.node.as_ref().unwrap().transit.calibration().is_empty());
    node.stop().await;
}

/// The JSON Schemas of `docs/contracts/`, by file name, checking `format` too.
struct Contracts(BTreeMap<String, jsonschema::Validator>);

impl Contracts {
    fn load() -> Contracts {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/contracts");
        let mut all = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".schema.json") {
                continue;
            }
            let schema: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{name} is not a valid JSON Schema: {e}"));
            all.insert(name, v);
        }
        Contracts(all)
    }

    /// Every way `msg` breaks the schema `name` (empty when it fits).
    fn errors(&self, name: &str, msg: &serde_json::Value) -> Vec<String> {
        self.0[name]
            .iter_errors(msg)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    fn assert_fits(&self, name: &str, msg: &serde_json::Value) {
        let errs = self.errors(name, msg);
        assert!(errs.is_empty(), "{name}: {errs:?}\n{msg}");
    }
}

/// A verifier from `tests/verifiers/` run as a child process: its stdout lines, collected
/// by a thread, so the test can wait for "ready" and then for its report.
struct ForeignVerifier {
    name: &'static str,
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ForeignVerifier {
    fn spawn(name: &'static str, mut cmd: Command) -> ForeignVerifier {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} verifier ({cmd:?}): {e}; .ci/run installs what it needs"));
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        ForeignVerifier { name, child, lines }
    }

    fn has_line(&self, f: impl Fn(&str) -> bool) -> bool {
        self.lines.lock().unwrap().iter().any(|l| f(l))
    }

    /// Its exit status and JSON report, within `timeout`.
    async fn report(&mut self, timeout: Duration) -> (std::process::ExitStatus, serde_json::Value) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Give the reader thread a moment to take the last line.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let lines = self.lines.lock().unwrap();
                let report = lines
                    .iter()
                    .rev()
                    .find_map(|l| serde_json::from_str(l).ok())
                    .unwrap_or_else(|| {
                        panic!("{} verifier printed no report: {lines:?}", self.name)
                    });
                return (status, report);
            }
            assert!(
                start.elapsed() < timeout,
                "the {} verifier did not finish within {timeout:?}: {:?}",
                self.name,
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ForeignVerifier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 17: the contracts as a centre written in another language meets them. A node
/// upgraded from `riac.verdict/1` (its outbox still holding `/1` verdicts) publishes `/1`
/// and `/2` verdicts with floats (`1.0`, `1e-7`, `0.1 + 0.2`, `1e21`), non-ASCII text and
/// integers past 2^32 through a real mosquitto. A Python centre (`rfc8785`,
/// `cryptography`, paho-mqtt) and a JavaScript centre (Node's crypto, npm `canonicalize`
/// and `mqtt`) verify every signature and the chain across the switch; verify-chain and
/// verify-export accept both versions; and every message the node sends (and each command
/// and sidecar the test sends) fits its JSON Schema in docs/contracts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centres_in_python_and_javascript_verify_every_verdict_and_every_message_fits_its_schema() {
    use riac_node::scan::verdict::*;
    let contracts = Contracts::load();
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, pki) = broker(dir.path());
    let centre = NodeKey::generate(&dir.path().join("centre.key")).unwrap();
    let cfg = node_config(
        dir.path(),
        "KHI-N7",
        "KHI",
        RawUplink {
            centre_public_key: Some(centre.public_hex()),
            allow_unsigned_commands: Some(false),
            ..tls_uplink(&broker.tls_url(), &pki)
        },
    );

    // The backlog an upgraded node has: 4 verdicts of /1, then 8 of /2 with hard values.
    const V1: usize = 4;
    const BACKLOG: usize = 12;
    let (store, key) = open_store_and_key(&cfg).await;
    fill_backlog_with(
        &store,
        &key,
        &cfg.node_id,
        &cfg.site_id,
        BACKLOG,
        |i, v: &mut Verdict| {
            v.manifest.confidence = Some(1.0);
            v.manifest.heading_probability = Some(1e-7);
            v.manifest.chapter_probability = Some(0.0);
            v.manifest.top_matches = vec![ManifestMatch {
                hs_code: "8703".into(),
                score: 0.1 + 0.2,
                reference_id: Some("réf-Ürümqi-1".into()),
            }];
            v.manifest.tiles = Some(4_000_000_000);
            v.transit = Some(TransitResult {
                status: TransitStatus::Changed,
                entry_scan_id: Some("URC-P2-20261101-000001".into()),
                change_score: Some(123456789.125),
                regions: vec![ChangedRegion {
                    x0: 0,
                    y0: 1,
                    x1: 4_294_967_295,
                    y1: 2_147_483_648,
                    area_m2: Some(1e21),
                    score: 100.0,
                    kind: Some("added".into()),
                }],
                reason: Some("Ürümqi → Karachi: «changé» 变化 🚚 \"quoted\" \\ back\tslash".into()),
                alignment_quality: Some(0.999999999999),
                mirrored: Some(false),
            });
            v.decided_by = "opérateur-Zoë".into();
            v.note = Some("Ångström, ĳ, 𝄞, \u{7f}, \u{2028} end".into());
            if i < V1 {
                v.schema = VERDICT_SCHEMA_V1.into();
                v.signing = None;
            }
        },
    )
    .await
    .unwrap();
    // The backlog's scans have no image files; an empty folder lets them be exported.
    let dirs: Vec<String> = store
        .read(|c| {
            let mut st = c.prepare("SELECT image_dir FROM scans")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .await
        .unwrap();
    for d in dirs {
        std::fs::create_dir_all(cfg.data_dir.join(d)).unwrap();
    }
    store.close().await;

    // The centres subscribe before the node connects (persistent sessions, as a centre).
    let verifiers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers");
    // Sim drops decided by the running node: two imports and one transit entry.
    let mut sim = riac_node::sim::Simulator::new(riac_node::sim::SimOptions {
        seed: 1717,
        resolution_scale: 0.06,
        ..Default::default()
    });
    let drops = vec![
        sim.next_drop(),
        sim.next_drop(),
        sim.next_transit_pair().entry,
    ];
    let expect = BACKLOG + drops.len();
    let args = |id: &str| {
        vec![
            "--port".to_string(),
            broker.plain_port.to_string(),
            "--pubkey".into(),
            key.public_hex(),
            "--expect".into(),
            expect.to_string(),
            "--timeout".into(),
            "150".into(),
            "--client-id".into(),
            id.into(),
        ]
    };
    let python = std::env::var("RIAC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut py_cmd = Command::new(python);
    py_cmd
        .arg(verifiers.join("verify_verdicts.py"))
        .args(args("centre-python"));
    let mut js_cmd = Command::new("node");
    js_cmd
        .arg(verifiers.join("verify-verdicts.mjs"))
        .args(args("centre-js"));
    let mut py = ForeignVerifier::spawn("python", py_cmd);
    let mut js = ForeignVerifier::spawn("javascript", js_cmd);
    let sub = Sub::start(broker.plain_port, "centre-rust", &["riac/v1/#"], false).await;
    for v in [&mut py, &mut js] {
        let start = Instant::now();
        while !v.has_line(|l| l == "ready") {
            if let Ok(Some(status)) = v.child.try_wait() {
                panic!("the {} verifier exited ({status}) before subscribing: {:?}; .ci/run installs its packages (pip: rfc8785 cryptography paho-mqtt; npm ci in tests/verifiers)", v.name, v.lines.lock().unwrap());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the {} verifier did not subscribe within 30 s: {:?}",
                v.name,
                v.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let mut node = TestNode::start_with(cfg).await;
    std::fs::create_dir_all(&node.hot).unwrap();
    for d in &drops {
        contracts.assert_fits("scan-1.schema.json", &d.sidecar);
        d.write_to(&node.hot).unwrap();
    }

    let (py_ok, py_report) = py.report(Duration::from_secs(180)).await;
    let (js_ok, js_report) = js.report(Duration::from_secs(60)).await;
    for (ok, report) in [(py_ok, &py_report), (js_ok, &js_report)] {
        assert!(ok.success(), "{ok}: {report}");
        assert_eq!(report["verified"], expect as u64, "{report}");
        assert_eq!(report["first_seq"], 1, "{report}");
        assert_eq!(
            report["schemas"],
            serde_json::json!(["riac.verdict/1", "riac.verdict/2"]),
            "{report}"
        );
    }

    // The centre's commands: an image request (signed, RFC 8785), a thresholds command,
    // and a malformed one; each gets a reply, the image comes in chunks.
    let at = |offset_secs: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let signed = |name: &str, id: &str, args: serde_json::Value| {
        let mut v = serde_json::json!({"command_id": id, "node_id": "KHI-N7", "name": name,
            "issued_at": at(-5), "expires_at": at(600), "args": args,
            "signing": Signing::rfc8785_ed25519()});
        v["signature"] = centre
            .sign_hex(&signing_bytes(v.as_object().unwrap(), Canonicalization::Rfc8785).unwrap())
            .into();
        v
    };
    let commands = [
        (
            "image-request",
            signed(
                "image-request",
                "c-img",
                serde_json::json!({"scan_id": drops[0].scan_id, "chunk_kb": 16}),
            ),
        ),
        (
            "thresholds",
            signed(
                "thresholds",
                "c-thr",
                serde_json::json!({"transit": {"refer_score": 0.5}}),
            ),
        ),
    ];
    for (name, c) in &commands {
        contracts.assert_fits("command.schema.json", c);
        sub.client
            .publish(
                format!("riac/v1/KHI/KHI-N7/cmd/{name}"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(c).unwrap(),
            )
            .await
            .unwrap();
    }
    sub.client
        .publish(
            "riac/v1/KHI/KHI-N7/cmd/thresholds",
            QoS::AtLeastOnce,
            false,
            b"{\"args\": 1}".to_vec(),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "three command replies", || {
        sub.json_on("/cmd-reply").len() >= 3
    })
    .await;
    wait_for(Duration::from_secs(30), "an entry package", || {
        !sub.on("/entries").is_empty()
    })
    .await;
    node.stop().await;
    wait_for(Duration::from_secs(10), "offline status", || {
        sub.json_on("/status")
            .iter()
            .any(|v| v["state"] == "offline")
    })
    .await;

    // Every message on every topic fits its schema; each schema was exercised.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (topic, payload) in sub.msgs.lock().unwrap().iter() {
        let msg: serde_json::Value =
            serde_json::from_slice(payload).unwrap_or_else(|e| panic!("{topic}: not JSON ({e})"));
        let schema = if topic.ends_with("/verdicts") {
            match msg["schema"].as_str() {
                Some("riac.verdict/1") => "verdict-1.schema.json",
                _ => "verdict-2.schema.json",
            }
        } else if topic.ends_with("/status") {
            "status.schema.json"
        } else if topic.ends_with("/entries") {
            "entry-1.schema.json"
        } else if topic.ends_with("/cmd-reply") {
            "cmd-reply.schema.json"
        } else if topic.ends_with("/image") {
            "image-chunk-1.schema.json"
        } else if topic.contains("/cmd/") {
            // The test's own commands, checked above as they were sent.
            continue;
        } else {
            panic!("a message on {topic}, which the contract does not name");
        };
        contracts.assert_fits(schema, &msg);
        *seen.entry(schema).or_default() += 1;
    }
    for s in [
        "verdict-1.schema.json",
        "verdict-2.schema.json",
        "status.schema.json",
        "entry-1.schema.json",
        "cmd-reply.schema.json",
        "image-chunk-1.schema.json",
    ] {
        assert!(
            seen.get(s).is_some_and(|n| *n > 0),
            "no message for {s}: {seen:?}"
        );
    }
    // The schemas are not vacuous: a changed outcome or an extra member is refused.
    let mut bad = sub.json_on("/verdicts").pop().unwrap();
    bad["outcome"] = "maybe".into();
    bad["extra"] = 1.into();
    assert_eq!(
        contracts.errors("verdict-2.schema.json", &bad).len(),
        2,
        "{bad}"
    );
    let replies = sub.json_on("/cmd-reply");
    assert!(
        replies
            .iter()
            .any(|r| r["command_id"] == "c-img" && r["ok"] == true),
        "{replies:?}"
    );
    assert!(
        replies
            .iter()
            .any(|r| r["command_id"].is_null() && r["ok"] == false),
        "{replies:?}"
    );

    // The node's own verifiers accept the mixed stream and an export of it.
    assert_chain_ok(&sub, &key, expect as u64);
    let out = dir.path().join("case.zip");
    let (code, text) = cli(
        &[
            "export",
            "--container",
            "MSCU1234566",
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            node.data.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(
        &[
            "verify-export",
            out.to_str().unwrap(),
            "--pubkey",
            &key.public_hex(),
        ],
        None,
    );
    assert_eq!(code, 0, "{text}");
    // Every backlog verdict (/1 and /2) went into the export and was checked.
    assert!(
        text.contains(&format!("{BACKLOG} verdict signature(s)")) && text.contains("OK:"),
        "{text}"
    );
    drop(sub);
    broker.stop();
}
