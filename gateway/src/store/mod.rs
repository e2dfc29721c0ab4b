//! The SQLite store of real-time and historical readings.
//!
//! - [`config`]: `[store]` — the file, durability, group commits, retention.
//! - [`schema`]: the tables, the schema version and migrations.
//! - [`series_index`]: the `(series, ts)` index, kept in passes.
//! - [`writer`]: the one writer — group commits, gapless `seq`, retention,
//!   and its thread ([`writer::WriterService`]).
//! - [`query`]: readers on their own connections — latest values, time
//!   ranges with cursors, bucketed aggregates.
//!
//! *Architecture invariant:* only the writer writes readings (the anchorer
//! writes its own `batches` tables on its own connection, see
//! `crate::anchor`). Everyone else opens
//! a [`query::StoreReader`]; WAL mode lets readers run beside the writer.

pub mod config;
pub mod query;
pub mod schema;
pub mod series_index;
pub mod writer;

use std::path::{Path, PathBuf};

pub use query::{Bucket, Cursor, Page, StoreReader};
pub use writer::{StoreWriter, WriterService};

/// Something went wrong with the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}{hint}", hint = hint(source))]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "cannot write in the state directory {dir}: {source} (the database {path} cannot be created there)"
    )]
    DirNotWritable {
        dir: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this gateway understands ({known}); \
         upgrade the gateway or restore a matching backup"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database {path}: {what} failed: {source}{hint}", hint = hint(source))]
    Sql {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} does not exist (has the gateway run with this state directory?)")]
    Missing { path: PathBuf },
    #[error("database {path} holds an invalid reading at seq {seq}: {reason}")]
    Corrupt {
        path: PathBuf,
        seq: i64,
        reason: String,
    },
}

impl StoreError {
    /// The SQLite error, if this is one.
    pub fn sqlite(&self) -> Option<&rusqlite::Error> {
        match self {
            Self::Open { source, .. } | Self::Sql { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self.sqlite().and_then(rusqlite::Error::sqlite_error_code),
            Some(rusqlite::ErrorCode::DiskFull)
        )
    }
}

/// A hint an installer can act on, for the errors that have an obvious cause.
fn hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            " (the disk is full: free space or lower [store.retention] max_size)"
        }
        Some(rusqlite::ErrorCode::ReadOnly) => {
            " (the file or its directory is read-only for the gateway's user)"
        }
        Some(rusqlite::ErrorCode::CannotOpen) => {
            " (check that the state directory exists and is writable)"
        }
        Some(rusqlite::ErrorCode::PermissionDenied) => {
            " (permission denied: check the owner of the state directory)"
        }
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            " (another process holds a lock on the database)"
        }
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            " (the file is not a valid gateway database)"
        }
        _ => "",
    }
}

pub(crate) fn sql_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sql {
        path: path.to_owned(),
        what,
        source,
    }
}
