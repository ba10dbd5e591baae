//! The real binary as a process: crash (kill -9) during a burst, graceful SIGTERM, config
//! errors, validate-config.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn kill_9_during_a_burst_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let hot = dir.path().join("hot");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&hot).unwrap();
    let mut daemon = Daemon::spawn(&cfg);

    const N: i64 = 30;
    let mut sim = sim(31);
    let ids: Vec<String> = (0..N)
        .map(|_| {
            let d = sim.next_drop();
            d.write_to(&hot).unwrap();
            d.scan_id
        })
        .collect();
    // Kill it while it is in the middle of the burst.
    let start = Instant::now();
    loop {
        let stored = std::fs::read_dir(&hot).unwrap().count();
        if stored < (N as usize * 2) * 3 / 4 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill9();
    let (scans_at_kill, _, _) = db_counts(&open_db(&data));
    assert!(
        scans_at_kill < N,
        "the burst was over before the kill; the test proves nothing"
    );

    let mut daemon = Daemon::spawn(&cfg);
    let start = Instant::now();
    loop {
        let c = db_counts(&open_db(&data));
        if c == (N, N, N) && sidecars_in(&hot).is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "after restart: {c:?}, hot folder {:?}",
            sidecars_in(&hot)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        daemon
            .terminate(Duration::from_secs(20))
            .map(|s| s.success()),
        Some(true)
    );

    let db = open_db(&data);
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    for id in &ids {
        let (n, v): (i64, i64) = db
            .query_row(
                "SELECT (SELECT count(*) FROM scans WHERE scan_id = ?1), (SELECT count(*) FROM verdicts WHERE scan_id = ?1)",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, v), (1, 1), "scan {id}");
    }
    // The verdict chain has no gap: seq 1..=N.
    let (min, max): (i64, i64) = db
        .query_row("SELECT min(seq), max(seq) FROM verdicts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((min, max), (1, N));
    assert!(
        files_in(&hot.join("rejected")).is_empty(),
        "{:?}",
        files_in(&hot.join("rejected"))
    );
    // No half-written scan directory survives.
    let mut stack = vec![data.join("scans")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".tmp-"),
                "temp dir left: {}",
                e.path().display()
            );
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let mut daemon = Daemon::spawn(&cfg);
    let status = daemon
        .terminate(Duration::from_secs(20))
        .expect("daemon exits within its deadline");
    assert!(status.success(), "{status:?}");
    let lines: Vec<String> = daemon.stderr_lines.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("riac-node stopped")),
        "{lines:?}"
    );
}

#[test]
fn config_errors_name_the_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[node]\nnode_id = \"n1\"\nsite_id = \"KHI\"\n[ingest]\nmax_width = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("validate-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingest.max_width") && err.contains("= 5") && err.contains("between 16 and"),
        "{err}"
    );

    std::fs::write(&bad, "[web]\nlisten = \"everywhere\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("validate-config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("web.listen") && err.contains("everywhere"),
        "{err}"
    );

    // `run` without the node's identity refuses to start, naming the keys.
    std::fs::write(&bad, "[paths]\ndata_dir = \"/tmp/x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node.node_id"),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("validate-config")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope.toml"), "{err}");

    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config/riac-node.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .arg("validate-config")
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let other = dir.path().join("elsewhere");
    let mut child = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RIAC_DATA_DIR", &other)
        .env("RIAC_LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = other.join("riac-node.db");
    let start = Instant::now();
    // The database appears before the hot folder (migrations run in between): wait for both.
    while !(db.exists() && dir.path().join("hot").is_dir())
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(db.exists(), "RIAC_DATA_DIR was not used");
    assert!(
        dir.path().join("hot").is_dir(),
        "the file's hot folder is still used"
    );
}

#[test]
fn systemd_readiness_watchdog_and_stopping_are_notified() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1" --listen 127.0.0.1:0"#)
        .arg(env!("CARGO_BIN_EXE_riac-node"))
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20)
        && !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3)
    {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut stopping = false;
    while let Ok(n) = sock.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    assert!(
        seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{seen:?}"
    );
    assert!(stopping, "STOPPING=1 not sent");
    assert!(status.success());
}

#[test]
fn simulate_post_feeds_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    let mut daemon = Daemon::spawn(&cfg);
    // Uploads need a scanner (or admin) account's API token.
    let data = dir.path().join("data");
    let token = cli_scanner_token(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .env("RIAC_API_TOKEN", &token)
        .args([
            "simulate",
            "--count",
            "3",
            "--resolution-scale",
            "0.15",
            "--seed",
            "77",
            "--post",
        ])
        .arg(format!("http://{}", daemon.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 3);
    let start = Instant::now();
    while db_counts(&open_db(&data)) != (3, 3, 3) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            db_counts(&open_db(&data))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let db = open_db(&data);
    for id in &ids {
        let src: String = db
            .query_row("SELECT source FROM scans WHERE scan_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(src, "http");
    }
    daemon.terminate(Duration::from_secs(20));
}

#[test]
fn simulate_out_writes_pairs_with_ground_truth_outside_the_drop_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args([
            "simulate",
            "--count",
            "2",
            "--transit-pairs",
            "--tamper-rate",
            "1",
            "--resolution-scale",
            "0.15",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sidecars_in(dir.path()).len(), 4);
    let truths = files_in(&dir.path().join("truth"));
    assert_eq!(truths.len(), 2);
    let t: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("truth").join(&truths[0])).unwrap())
            .unwrap();
    assert_eq!(t["tampered"], true);
}

#[test]
fn simulate_goods_on_a_family_s_scanner_and_refuses_a_pair_of_families_for_single_scans() {
    let dir = tempfile::tempdir().unwrap();
    let sim = |families: &str| {
        Command::new(env!("CARGO_BIN_EXE_riac-node"))
            .args([
                "simulate",
                "--count",
                "1",
                "--goods",
                "2202.10",
                "--families",
                families,
                "--resolution-scale",
                "0.15",
                "--out",
            ])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = sim("gamma-cobalt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sidecars = sidecars_in(dir.path());
    assert_eq!(sidecars.len(), 1);
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(&sidecars[0])).unwrap()).unwrap();
    assert_eq!(s["declaration"]["goods"][0]["hs_code"], "2202.10", "{s}");
    assert!(
        s["scanner_id"].as_str().unwrap().ends_with("-GC"),
        "the gamma-cobalt family's scanner: {s}"
    );
    let out = sim("gamma-cobalt,portal-radar");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--families"), "{err}");
}

#[test]
fn demo_serves_simulated_scans() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--interval-secs",
            "0.3",
            "--resolution-scale",
            "0.15",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (login_tx, login_rx) = std::sync::mpsc::channel();
    // Keep draining stdout so the demo never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(u) = line.split("running: ").nth(1) {
                let _ = tx.send(u.trim().to_string());
            }
            // "  log in as:  demo / <password>  (admin; ...)"
            if let Some(acct) = line.split("log in as:").nth(1) {
                let mut it = acct.split_whitespace();
                if let (Some(u), Some("/"), Some(p)) = (it.next(), it.next(), it.next()) {
                    let _ = login_tx.send((u.to_string(), p.to_string()));
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("demo prints its URL");
    let (user, password) = login_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("demo prints its account");
    let session = login_blocking(url.trim_end_matches('/'), &user, &password);
    let client = reqwest::blocking::Client::builder()
        .default_headers(session)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut decided = 0;
    while start.elapsed() < Duration::from_secs(60) && decided < 3 {
        if let Ok(r) = client
            .get(format!("{url}api/v1/scans?state=decided"))
            .send()
        {
            if let Ok(v) = r.json::<serde_json::Value>() {
                decided = v["scans"].as_array().map_or(0, |a| a.len());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(decided >= 3, "demo decided {decided} scans in 60 s");
    assert!(status.success());
}

#[test]
fn doctor_passes_on_a_good_setup_and_fails_clearly_on_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_daemon_config(dir.path());
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("hot")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["doctor", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The disk of a CI machine may be small: that check may warn or fail; the others pass.
    for name in ["config", "data dir", "database", "hot folder", "web listen"] {
        let line = text
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} line: {text}"));
        assert!(line.starts_with("PASS"), "{line}");
    }

    std::fs::remove_dir_all(dir.path().join("hot")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_riac-node"))
        .args(["doctor", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let line = text.lines().find(|l| l.contains("hot folder")).unwrap();
    assert!(
        line.starts_with("FAIL") && line.contains("does not exist"),
        "{line}"
    );
}
