//! The one error type of the storage crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A config value of a storage section is wrong; start-up stops. `key` is its TOML path.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// A meter registry CSV refused: `line` (1: the header) and `column` name the cell.
    #[error("the registry, line {line}, column `{column}`: {reason}")]
    Registry {
        line: u64,
        column: String,
        reason: String,
    },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A WAL segment could not be read (an I/O error, not a torn record): nothing was cut.
    #[error("reading WAL segment {path} at byte {offset}: {source}")]
    WalRead {
        path: PathBuf,
        offset: u64,
        #[source]
        source: std::io::Error,
    },

    /// The WAL stopped taking messages: a failed write could not be undone (the segment could
    /// not be cut back to its last commit), so appending more could make it land later.
    #[error("the WAL is stopped: a failed write to {path} could not be undone ({reason}); restart meterflow once the disk is healthy")]
    WalStopped { path: PathBuf, reason: String },

    #[error("parquet write to {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: ::parquet::errors::ParquetError,
    },

    /// The ClickHouse writer stopped outside shutdown (see the log for why): what it did not
    /// confirm is in the WAL, and a restart replays it. A retry in-process cannot help.
    #[error("the ClickHouse writer stopped (see the log); restart meterflow: the WAL replays what ClickHouse lacks")]
    ClickHouseWriterStopped,

    #[error("splitting a batch by date: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),

    /// A question the read model cannot answer as asked (a meter id that is none, a period
    /// that ends before it starts): asking again the same way fails the same way.
    #[error("read request: {reason}")]
    ReadRequest { reason: String },

    /// A Parquet file of the readings tree could not be decoded (corrupt, cut short, or
    /// not Parquet); `row_group` names the row group when the damage is inside one.
    #[error("reading Parquet file {path}{}: {source}", row_group.map(|g| format!(" (row group {g})")).unwrap_or_default())]
    ParquetRead {
        path: PathBuf,
        row_group: Option<usize>,
        #[source]
        source: ::parquet::errors::ParquetError,
    },

    /// A Parquet file in the readings tree that is not a file of readings: a column missing,
    /// of another type, or with nulls. Not read; remove or move it.
    #[error("Parquet file {path} is not a file of readings: {reason}")]
    ForeignParquet { path: PathBuf, reason: String },

    /// A ClickHouse query of the read model failed; the error names the query's action.
    #[error(transparent)]
    ClickHouse(#[from] crate::clickhouse::ClickHouseError),

    /// ClickHouse answered something the read model cannot take (a row cut short, text that
    /// is not UTF-8, rows out of the order asked for): `offset` is the byte of the answer.
    #[error("clickhouse {action}: the answer at byte {offset}: {reason}")]
    ClickHouseAnswer {
        action: &'static str,
        offset: u64,
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        StorageError::Config {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// `Err` naming `key` when `value` is 0.
    pub(crate) fn positive(key: &str, value: u64) -> Result<(), StorageError> {
        if value == 0 {
            return Err(StorageError::config(key, "must be greater than 0"));
        }
        Ok(())
    }

    /// Whether the same write may succeed later (a full disk may be freed, a file system
    /// may come back); a malformed batch never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Io { .. } | StorageError::WalRead { .. } => true,
            StorageError::WalStopped { .. }
            | StorageError::Config { .. }
            | StorageError::ClickHouseWriterStopped => false,
            StorageError::Parquet { source, .. } => {
                matches!(source, ::parquet::errors::ParquetError::External(_))
            }
            StorageError::Arrow(_) => false,
            StorageError::ReadRequest { .. }
            | StorageError::ForeignParquet { .. }
            | StorageError::Registry { .. } => false,
            StorageError::ParquetRead { source, .. } => {
                matches!(source, ::parquet::errors::ParquetError::External(_))
            }
            StorageError::ClickHouse(e) => e.is_retryable(),
            // A malformed answer is the server's or the connection's: a new query may get a
            // whole one (an answer cut short by a proxy), so it is worth one more try.
            StorageError::ClickHouseAnswer { .. } => true,
        }
    }
}
