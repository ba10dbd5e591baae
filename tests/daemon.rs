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
    // The database appears before the hot folder is created: wait for both.
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
