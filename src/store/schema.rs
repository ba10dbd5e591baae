//! Numbered schema migrations, applied in order at open; `PRAGMA user_version` records the
//! last one applied. A migration is never edited once released: add a new one.

use std::path::Path;

use rusqlite::Connection;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: scans, verdicts with their hash chain, the outbox, the audit chain, rejects.
    r#"
    CREATE TABLE scans (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        scan_id            TEXT NOT NULL UNIQUE,
        received_at        TEXT NOT NULL,
        scanned_at         TEXT NOT NULL,
        scanner_id         TEXT NOT NULL,
        site_id            TEXT NOT NULL,
        direction          TEXT NOT NULL,
        regime             TEXT NOT NULL,
        declaration_number TEXT NOT NULL,
        container_ids      TEXT NOT NULL,   -- JSON array of ISO 6346 ids
        vehicle_plate      TEXT,
        sidecar            TEXT NOT NULL,   -- the sidecar JSON exactly as received
        source             TEXT NOT NULL,   -- hot_folder | http
        content_sha256     TEXT NOT NULL,   -- over sidecar + image bytes: duplicate detection
        image_dir          TEXT NOT NULL,   -- relative to the data dir
        original_file      TEXT NOT NULL,   -- name inside image_dir
        has_low_energy     INTEGER NOT NULL DEFAULT 0,
        width              INTEGER NOT NULL,
        height             INTEGER NOT NULL,
        source_format      TEXT NOT NULL,
        source_bits        INTEGER NOT NULL,
        pixel_meaning      TEXT NOT NULL,
        state              TEXT NOT NULL    -- ingested (awaiting its verdict) | decided
    );
    CREATE INDEX scans_state ON scans(state) WHERE state <> 'decided';
    CREATE INDEX scans_declaration ON scans(declaration_number);
    CREATE TABLE scan_containers (
        container_id TEXT NOT NULL,
        scan_id      TEXT NOT NULL REFERENCES scans(scan_id),
        PRIMARY KEY (container_id, scan_id)
    ) WITHOUT ROWID;

    CREATE TABLE verdicts (
        seq        INTEGER PRIMARY KEY,     -- per node, gap-free, assigned by the one writer
        verdict_id TEXT NOT NULL UNIQUE,
        scan_id    TEXT NOT NULL REFERENCES scans(scan_id),
        decided_at TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        decided_by TEXT NOT NULL,
        supersedes TEXT,
        body       TEXT NOT NULL,           -- the verdict JSON as published
        hash       TEXT NOT NULL            -- sha256 of the canonical body without signature
    );
    CREATE INDEX verdicts_scan ON verdicts(scan_id, seq);

    CREATE TABLE outbox (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,           -- verdict | ...
        ref        TEXT,                    -- verdict_id for verdicts
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        created_at TEXT NOT NULL
    );

    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        subject   TEXT,
        detail    TEXT NOT NULL,            -- JSON
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );

    CREATE TABLE rejects (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      TEXT NOT NULL,
        scan_id TEXT,
        source  TEXT NOT NULL,
        field   TEXT,
        reason  TEXT NOT NULL
    );
    "#,
    // 2: entry packages received from entry sites, for transit pairing at this exit site.
    r#"
    CREATE TABLE entry_packages (
        entry_scan_id      TEXT PRIMARY KEY,
        origin_site        TEXT NOT NULL,
        exit_site          TEXT NOT NULL,
        declaration_number TEXT NOT NULL,
        container_ids      TEXT NOT NULL,   -- JSON array
        scanned_at         TEXT NOT NULL,
        received_at        TEXT NOT NULL,
        image_path         TEXT NOT NULL,   -- relative to the data dir
        package            TEXT NOT NULL    -- the package JSON (metadata, no image)
    );
    CREATE INDEX entry_packages_declaration ON entry_packages(declaration_number);
    CREATE TABLE entry_package_containers (
        container_id  TEXT NOT NULL,
        entry_scan_id TEXT NOT NULL REFERENCES entry_packages(entry_scan_id),
        PRIMARY KEY (container_id, entry_scan_id)
    ) WITHOUT ROWID;
    "#,
    // 3: operator accounts (argon2id hashes), login sessions and API tokens, stored by the
    // SHA-256 of their values.
    r#"
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
        role          TEXT NOT NULL,        -- operator | supervisor | admin | scanner
        password_hash TEXT NOT NULL,        -- argon2id PHC string
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL,
        last_login_at TEXT
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,        -- sha256 of the cookie value
        user_id    INTEGER NOT NULL REFERENCES users(id),
        csrf_token TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        client     TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE api_tokens (
        token_hash TEXT PRIMARY KEY,        -- sha256 of the bearer token
        user_id    INTEGER NOT NULL REFERENCES users(id),
        label      TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked    INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    "#,
    // 4 (uplink): outbox by kind; entry packages this node sends; commands from the centre.
    r#"
    CREATE INDEX outbox_kind ON outbox(kind, id);
    CREATE TABLE entry_outgoing (
        scan_id    TEXT PRIMARY KEY REFERENCES scans(scan_id),
        exit_site  TEXT NOT NULL,
        state      TEXT NOT NULL,           -- queued | sent | deferred | local | skipped | failed
        bytes      INTEGER,
        reduction  REAL,
        updated_at TEXT NOT NULL,
        detail     TEXT
    );
    CREATE INDEX entry_outgoing_state ON entry_outgoing(state) WHERE state IN ('queued', 'deferred');
    CREATE TABLE uplink_commands (
        command_id  TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        received_at TEXT NOT NULL,
        ok          INTEGER NOT NULL,
        reply       TEXT NOT NULL           -- the reply JSON as queued
    );
    "#,
    // 5: the reference library for manifest matching (src/matching/library.rs): one row per
    // reference scan, its tile embeddings as little-endian f32 blobs, its thumbnail file.
    r#"
    CREATE TABLE library_refs (
        reference_id  TEXT PRIMARY KEY,  -- the reference drop's scan_id
        hs_code       TEXT NOT NULL,     -- its declared HS code: the label
        description   TEXT,
        imported_at   TEXT NOT NULL,
        source_sha256 TEXT NOT NULL,     -- sidecar + image bytes: an unchanged re-import is a no-op
        model_sha256  TEXT NOT NULL,     -- the model that made the embeddings
        dim           INTEGER NOT NULL,
        tile_count    INTEGER NOT NULL,
        fill          REAL NOT NULL,     -- share of the cargo band that holds cargo
        width         INTEGER NOT NULL,
        height        INTEGER NOT NULL,
        thumbnail     TEXT NOT NULL,     -- relative to the data dir
        descriptor    BLOB NOT NULL,     -- scan descriptor, dim f32
        tiles         BLOB NOT NULL      -- tile_count * dim f32
    );
    CREATE INDEX library_refs_hs ON library_refs(hs_code);
    "#,
    // 6: transit exits whose current verdict awaits their entry scan (pairing retries and
    // the unpaired timeout work from here, not from the verdict bodies).
    r#"
    CREATE TABLE transit_awaiting (
        exit_scan_id       TEXT PRIMARY KEY REFERENCES scans(scan_id),
        verdict_id         TEXT NOT NULL,   -- the awaiting_entry verdict a paired one supersedes
        declaration_number TEXT NOT NULL,
        since              TEXT NOT NULL    -- when that verdict was stored
    );
    CREATE INDEX transit_awaiting_declaration ON transit_awaiting(declaration_number);
    "#,
    // 7: retention. An evicted scan keeps its row and verdicts; its image files are gone and
    // these columns say when and why. Admin pins keep a scan's images from eviction.
    r#"
    ALTER TABLE scans ADD COLUMN evicted_at TEXT;
    ALTER TABLE scans ADD COLUMN evicted_reason TEXT;
    CREATE INDEX scans_retention ON scans(received_at) WHERE evicted_at IS NULL;
    CREATE TABLE scan_pins (
        scan_id   TEXT PRIMARY KEY REFERENCES scans(scan_id),
        pinned_by TEXT NOT NULL,
        pinned_at TEXT NOT NULL,
        note      TEXT
    );
    "#,
    // 8: retention of received entry packages: the image of a package no exit here needs
    // any more is removed; the row stays and says when.
    r#"
    ALTER TABLE entry_packages ADD COLUMN evicted_at TEXT;
    "#,
    // 9: security hardening. API tokens get an optional expiry and record when they were
    // revoked (their public id is the first 12 hex digits of token_hash); sessions record
    // their last use (idle timeout); an account made by `riac-node user add` must change
    // its password at its first login.
    r#"
    ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
    ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;
    ALTER TABLE sessions ADD COLUMN last_seen_at TEXT;
    ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The schema version this binary writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let t = conn.transaction()?;
        t.execute_batch(sql)?;
        t.pragma_update(None, "user_version", i as i64 + 1)?;
        t.commit()?;
        tracing::info!(version = i + 1, "database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_newer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.db");
        let mut c = Connection::open(&p).unwrap();
        migrate(&mut c, &p).unwrap();
        migrate(&mut c, &p).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        c.pragma_update(None, "user_version", VERSION + 1).unwrap();
        assert!(matches!(
            migrate(&mut c, &p),
            Err(StoreError::TooNew { .. })
        ));
    }
}
