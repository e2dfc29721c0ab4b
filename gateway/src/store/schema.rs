//! Tables, schema version and migrations.
//!
//! Device and point strings live once in `series`, unit and source once in
//! `labels`; a row of `readings` holds only integers and the value. `seq`
//! is the rowid, so the table is clustered in commit order and retention
//! deletes a prefix. `meta.next_seq` is written in the same transaction as
//! the readings, so `seq` survives restarts without a gap even when
//! retention has deleted every row.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::config::Synchronous;
use super::{StoreError, sql_err};

/// The schema version this gateway writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     CREATE TABLE series (
         id INTEGER PRIMARY KEY,
         device TEXT NOT NULL,
         point TEXT NOT NULL,
         UNIQUE (device, point)
     );
     CREATE TABLE labels (
         id INTEGER PRIMARY KEY,
         unit TEXT NOT NULL,   -- '' when the reading has no unit
         source TEXT NOT NULL,
         UNIQUE (unit, source)
     );
     -- value has no declared type on purpose: no affinity, so an integer,
     -- a float, a text and a blob are each stored exactly as given.
     CREATE TABLE readings (
         seq INTEGER PRIMARY KEY,
         series INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         label INTEGER NOT NULL,
         flags INTEGER NOT NULL,  -- value kind << 2 | quality
         value
     );
     CREATE INDEX readings_by_series_ts ON readings (series, ts);
     CREATE TABLE latest (series INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
     -- all readings with seq < checkpoints.seq were committed at or before committed_at
     CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, committed_at INTEGER NOT NULL);
     INSERT INTO meta (key, value) VALUES ('next_seq', 1);",
    // 1 → 2: anchoring (docs/anchoring.md). Written by the anchorer on its
    // own connection; the readings writer never touches these tables.
    "CREATE TABLE batches (
         idx INTEGER PRIMARY KEY,           -- 1, 2, … gapless
         first_seq INTEGER NOT NULL,
         last_seq INTEGER NOT NULL,
         root BLOB NOT NULL,                -- Merkle root, 32 bytes
         prev_hash BLOB NOT NULL,           -- previous batch's hash (zeros for 1)
         hash BLOB NOT NULL,                -- this batch's hash (the local chain)
         sealed_at INTEGER NOT NULL,        -- UTC ns
         -- the on-chain anchor, once it has its confirmations
         chain_id INTEGER,
         contract BLOB,
         gateway BLOB,                      -- the anchoring account
         tx_hash BLOB,
         block_number INTEGER,
         block_hash BLOB,
         anchored_at INTEGER
     );
     CREATE UNIQUE INDEX batches_by_last_seq ON batches (last_seq);
     -- the leaves (32 bytes per reading, in seq order) for proofs and audits;
     -- dropped once retention has deleted every reading of the batch
     CREATE TABLE batch_leaves (batch INTEGER PRIMARY KEY, leaves BLOB NOT NULL);",
    // 2 → 3: the series index is kept by the writer, in bulk, instead of
    // by SQLite on every commit (docs/ARCHITECTURE.md, "The series
    // index"). A commit then writes a few appended pages instead of one
    // index page per series it touches. Readings above
    // `meta.indexed_upto` are not in `series_ts` yet; queries read them
    // by seq. The triggers keep the index true when rows are deleted
    // (retention) or edited by hand.
    "CREATE TABLE series_ts (
         series INTEGER NOT NULL,
         ts INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         PRIMARY KEY (series, ts, seq)
     ) WITHOUT ROWID;
     INSERT INTO series_ts (series, ts, seq) SELECT series, ts, seq FROM readings ORDER BY series, ts, seq;
     DROP INDEX readings_by_series_ts;
     INSERT INTO meta (key, value) VALUES ('indexed_upto', coalesce((SELECT max(seq) FROM readings), 0));
     CREATE TRIGGER readings_deleted AFTER DELETE ON readings BEGIN
         DELETE FROM series_ts WHERE series = old.series AND ts = old.ts AND seq = old.seq;
     END;
     CREATE TRIGGER readings_moved AFTER UPDATE OF series, ts ON readings BEGIN
         DELETE FROM series_ts WHERE series = old.series AND ts = old.ts AND seq = old.seq;
         INSERT OR IGNORE INTO series_ts (series, ts, seq) SELECT new.series, new.ts, new.seq
             WHERE new.seq <= (SELECT value FROM meta WHERE key = 'indexed_upto');
     END;",
];

/// Opens (creating if needed) the database for the writer, in WAL mode,
/// migrated to [`SCHEMA_VERSION`], and proves it can be written: a full
/// disk or a read-only directory fails here, before readiness.
pub fn open_for_write(
    path: &Path,
    synchronous: Synchronous,
    cache_mib: u32,
) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| diagnose_open(path, source))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 1000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA cache_size = -{kib};
         PRAGMA foreign_keys = OFF;",
        kib = u64::from(cache_mib) * 1024
    ))
    .map_err(sql_err(path, "setting up WAL mode"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(sql_err(path, "reading the journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // SQLite silently keeps another mode when it cannot create the WAL.
        return Err(StoreError::Sql {
            path: path.to_owned(),
            what: "switching to WAL mode",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some(format!("journal mode stayed `{mode}`")),
            ),
        });
    }
    migrate(&conn, path)?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('opened_at', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [biota_common::time::now_ns()],
    )
    .map_err(sql_err(path, "the write check at start"))?;
    Ok(conn)
}

/// A second writing connection for the anchorer's own tables (`batches`,
/// `batch_leaves`) on a database the writer has opened and migrated. Its
/// transactions are short and `BEGIN IMMEDIATE`, and the busy timeout
/// covers the moments the readings writer holds the lock.
pub fn open_side_writer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    let conn = open_existing(path)?.map_err(|source| diagnose_open(path, source))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 10000; PRAGMA synchronous = {sync};"
    ))
    .map_err(sql_err(path, "setting up the anchorer's connection"))?;
    let version = user_version(&conn, path)?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// SQLite says only "unable to open database file"; the directory tells
/// why (read-only file system, permissions, disk full), so ask it.
fn diagnose_open(path: &Path, source: rusqlite::Error) -> StoreError {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.to_owned(),
        None => Path::new(".").to_owned(),
    };
    let probe = dir.join(format!(".biota-write-check-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            StoreError::Open {
                path: path.to_owned(),
                source,
            }
        }
        Err(e) => StoreError::DirNotWritable {
            dir,
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Opens an existing database read-write without creating it: the outer
/// error when it does not exist, the inner one when SQLite cannot open it.
fn open_existing(path: &Path) -> Result<rusqlite::Result<Connection>, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ))
}

/// Opens an existing database for reading only.
pub fn open_for_read(path: &Path) -> Result<Connection, StoreError> {
    // Read-write flags without CREATE: a WAL reader needs to map the
    // shared-memory file; query_only keeps this connection from writing.
    let conn = open_existing(path)?
        .or_else(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        })
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")
        .map_err(sql_err(path, "setting up the reader"))?;
    let version = user_version(&conn, path)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    Ok(conn)
}

fn user_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql_err(path, "reading the schema version"))
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let found = user_version(conn, path)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = from + 1;
        tracing::info!(path = %path.display(), from, to, "migrating database schema");
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {to}; COMMIT;"
        ))
        .map_err(|source| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Sql {
                path: path.to_owned(),
                what: "migrating the schema",
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_migrates_and_refuses_newer_schemas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/gateway.db");
        let conn = open_for_write(&path, Synchronous::Full, 8).expect("open");
        assert_eq!(user_version(&conn, &path).expect("version"), SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA user_version = 99")
            .expect("bump");
        drop(conn);
        let err = open_for_write(&path, Synchronous::Full, 8).expect_err("too new");
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
        let err = open_for_read(&path).expect_err("too new");
        assert!(err.to_string().contains("newer than this gateway"), "{err}");
    }

    #[test]
    fn version_2_databases_get_the_series_index_from_their_sqlite_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        {
            let conn = Connection::open(&path).expect("open");
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).expect("migrate");
            }
            conn.execute_batch(
                "PRAGMA user_version = 2;
                 INSERT INTO readings (seq, series, ts, label, flags, value)
                 VALUES (1, 2, 30, 1, 0, 1.0), (2, 1, 10, 1, 0, 2.0), (3, 2, 20, 1, 0, 3.0);
                 UPDATE meta SET value = 4 WHERE key = 'next_seq';",
            )
            .expect("version 2 with readings");
        }
        let conn = open_for_write(&path, Synchronous::Full, 8).expect("migrate");
        let entries: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT series, ts, seq FROM series_ts")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(entries, [(1, 10, 2), (2, 20, 3), (2, 30, 1)]);
        let upto: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'indexed_upto'",
                [],
                |r| r.get(0),
            )
            .expect("indexed_upto");
        assert_eq!(upto, 3);
        let old_index: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'readings_by_series_ts'",
                [],
                |r| r.get(0),
            )
            .expect("old index");
        assert_eq!(old_index, 0, "SQLite's own index is dropped");
    }

    #[test]
    fn reopening_keeps_data_and_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let conn = open_for_write(&path, Synchronous::Normal, 8).expect("open");
        conn.execute("UPDATE meta SET value = 42 WHERE key = 'next_seq'", [])
            .expect("update");
        drop(conn);
        let conn = open_for_write(&path, Synchronous::Normal, 8).expect("reopen");
        let next: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .expect("next_seq");
        assert_eq!(next, 42);
    }

    #[test]
    fn missing_database_is_a_clear_error_for_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open_for_read(&dir.path().join("nope.db")).expect_err("missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
