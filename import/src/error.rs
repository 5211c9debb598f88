//! The one error type of the import crate: what stops the import (a bad mapping, no inputs,
//! an unreachable ClickHouse, a sink that failed), what stops one file (the others go on),
//! and why a row is not a reading (the reason its dead letter keeps; the file goes on).
//!
//! Each variant prints what the command printed before it had a type: the text, and the
//! causes the binary lists under it.

use std::path::PathBuf;

use meterflow_storage::clickhouse::ClickHouseError;
use meterflow_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The CSV mapping or a CSV setting is wrong (`--map`, a mapping file's fields, `tz`,
    /// `delimiter`, `scale`, `to_unit`). `key` is the mapping target or the setting at fault
    /// when the fault is one's; the text names it too.
    #[error("{reason}")]
    Mapping { key: Option<String>, reason: String },

    /// A mapping file is not a mapping's TOML (its syntax, a key it must not or must have).
    #[error("mapping file")]
    MappingToml(#[source] toml::de::Error),

    /// A setting in a mapping file is wrong; the source says which.
    #[error("mapping file")]
    MappingFile(#[source] Box<ImportError>),

    /// A column mapped by name is not in the CSV file's header. `key` is the mapping target,
    /// `header` the header's columns as the message lists them.
    #[error("column {column:?} (for {key}) is not in the header; its columns are {header}")]
    NoColumn {
        key: &'static str,
        column: String,
        header: String,
    },

    /// A column mapped by position is beyond the CSV file's header.
    #[error("column #{position} (for {key}) is beyond the header's {columns} columns: {header}")]
    BeyondHeader {
        key: &'static str,
        position: usize,
        columns: usize,
        header: String,
    },

    /// The CSV file has no header line.
    #[error("the CSV file is empty: no header line")]
    EmptyCsv,

    /// The header line of a CSV file could not be read.
    #[error("reading the CSV header")]
    CsvHeader(#[source] ::csv::Error),

    /// A CSV file could not be read past data row `after_row` (an I/O error); the file stops
    /// there.
    #[error("reading the CSV file after data row {after_row}")]
    CsvRead {
        after_row: u64,
        #[source]
        source: ::csv::Error,
    },

    /// A row is not a valid reading: it becomes a dead letter with this text as its reason,
    /// and the file goes on. `field` is the mapping target at fault (`meter_id`, `channel`,
    /// `ts`, `value`, `unit`, `quality`), or `row` for the row's shape.
    #[error("{reason}")]
    InvalidRow { field: &'static str, reason: String },

    /// A path given does not exist.
    #[error("{path}: no such file or folder")]
    NoSuchPath { path: PathBuf },

    /// A file given by name is neither `.parquet` nor `.csv`.
    #[error("{path}: not a .parquet or .csv file (give a folder to search it)")]
    NotAnInput { path: PathBuf },

    /// The paths given hold no `.parquet` or `.csv` file.
    #[error("no .parquet or .csv files under the paths given")]
    NoInputs,

    /// A CSV file is among the inputs, and no mapping was given.
    #[error("{path} is a CSV file: say how its columns map with --map or --mapping")]
    NoMapping { path: PathBuf },

    /// Every file given is in the Parquet tree the import writes into (it would import its
    /// own output again).
    #[error("every file given is in the Parquet tree being imported into")]
    OnlyOwnOutput,

    /// A file or folder could not be read or written; `action` says what was done to `path`
    /// (`reading folder`, `resolving`, `creating`, `reading`, `writing`).
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The size and modification time of a file found could not be read.
    #[error("{path}")]
    Metadata {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input file could not be opened or read. The text is the system's only: where it is
    /// reported, the file is named before it.
    #[error("{}", with_causes(error))]
    Input {
        path: PathBuf,
        error: std::io::Error,
    },

    /// An input file could not be read as Parquet (named where it is reported).
    #[error("{}", with_causes(error))]
    Parquet {
        path: PathBuf,
        error: ::parquet::errors::ParquetError,
    },

    /// A row group of an input Parquet file could not be read (named where it is reported).
    #[error("{}", with_causes(error))]
    ParquetBatch {
        path: PathBuf,
        error: arrow_schema::ArrowError,
    },

    /// Not one row of a file could be taken: its rows are dead letters, and the file is not
    /// marked done (a rerun reads it again).
    #[error("no row could be taken ({rows} rows refused, kept as dead letters): {reasons}")]
    AllRowsRefused {
        path: PathBuf,
        rows: u64,
        reasons: String,
    },

    /// A Parquet file compressed with a codec this build does not read.
    #[error("compressed with {codec}, which meterflow does not read (it reads zstd, snappy, gzip, lz4 and uncompressed files): write it with one of those")]
    ParquetCodec { path: PathBuf, codec: String },

    /// A column of a Parquet file cannot be the field it is for (or is not there): which
    /// column, the type found, what is expected.
    #[error("column {column:?}: {reason}")]
    ParquetColumn {
        path: PathBuf,
        column: String,
        reason: String,
    },

    /// A Parquet file whose columns are not those of meterflow's readings.
    #[error("not a Parquet file of readings")]
    NotReadings {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// `{data_dir}/import/progress.json` does not parse: edit or remove it (removing it
    /// imports every file again).
    #[error("{path} is not a progress record")]
    ProgressRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// ClickHouse did not answer before the import began (a wrong address or password stops
    /// here, instead of being retried as an outage). `target` names the server.
    #[error("{target}: cannot reach ClickHouse")]
    Unreachable {
        target: String,
        #[source]
        source: ClickHouseError,
    },

    /// The ClickHouse writer stopped while the import waited for it to take the rest.
    #[error(
        "the ClickHouse writer stopped; what it did not confirm is imported again by the next run"
    )]
    WriterStopped,

    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),

    /// The sinks: the Parquet files, the ClickHouse writer, the dead letters.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ImportError {
    /// A mapping error about `key` (a mapping target or setting).
    pub(crate) fn mapping(key: &str, reason: impl Into<String>) -> Self {
        ImportError::Mapping {
            key: Some(key.to_string()),
            reason: reason.into(),
        }
    }

    /// Why a row is not a reading; `field` is the target at fault.
    pub(crate) fn row(field: &'static str, reason: impl Into<String>) -> Self {
        ImportError::InvalidRow {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImportError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether running the same import again, unchanged, may get further: the disk, the
    /// network or ClickHouse may be back (and a rerun resumes where this one was confirmed);
    /// a wrong mapping, a path that is not there or a broken file stay as they are.
    pub fn is_retryable(&self) -> bool {
        match self {
            ImportError::Io { .. }
            | ImportError::Metadata { .. }
            | ImportError::Input { .. }
            | ImportError::Runtime(_)
            | ImportError::WriterStopped => true,
            ImportError::CsvHeader(source) | ImportError::CsvRead { source, .. } => {
                source.is_io_error()
            }
            ImportError::Unreachable { source, .. } => source.is_retryable(),
            ImportError::Storage(StorageError::ClickHouseWriterStopped) => true,
            ImportError::Storage(e) => e.is_retryable(),
            ImportError::Mapping { .. }
            | ImportError::MappingToml(_)
            | ImportError::MappingFile(_)
            | ImportError::NoColumn { .. }
            | ImportError::BeyondHeader { .. }
            | ImportError::EmptyCsv
            | ImportError::InvalidRow { .. }
            | ImportError::NoSuchPath { .. }
            | ImportError::NotAnInput { .. }
            | ImportError::NoInputs
            | ImportError::NoMapping { .. }
            | ImportError::OnlyOwnOutput
            | ImportError::Parquet { .. }
            | ImportError::ParquetBatch { .. }
            | ImportError::NotReadings { .. }
            | ImportError::AllRowsRefused { .. }
            | ImportError::ParquetColumn { .. }
            | ImportError::ParquetCodec { .. }
            | ImportError::ProgressRecord { .. } => false,
        }
    }
}

/// An error and its causes, `: `-separated (how a file's failure is reported, and logged).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_listed_and_retries_judged() {
        let e = ImportError::io(
            "reading",
            "/data/import/progress.json",
            std::io::Error::other("disk gone"),
        );
        assert_eq!(
            with_causes(&e),
            "reading /data/import/progress.json: disk gone"
        );
        assert!(e.is_retryable());
        let bad_map = ImportError::MappingFile(Box::new(ImportError::mapping(
            "delimiter",
            "delimiter \";;\" is not one ASCII character or \"tab\"",
        )));
        assert_eq!(
            with_causes(&bad_map),
            "mapping file: delimiter \";;\" is not one ASCII character or \"tab\""
        );
        assert!(!bad_map.is_retryable());
    }
}
