//! What VEE keeps, on the Parquet tree and in ClickHouse alike; actual reads are never
//! touched.
//!
//! - [`versions`]: `readings_vee`, the estimates and substitutes of each run as a version of
//!   the values they mend; a value's latest version is the one of the greatest `version`.
//! - [`runs`]: `vee_runs`, one row per run (its period, meters, parameters, what it found),
//!   and `vee_exceptions`, the exceptions each run found. A period's exceptions are those
//!   of the latest run that judged it, so a rerun after late reads came replaces them.
//!
//! On the tree every file is written whole under a hidden `.tmp` name, synced, and renamed.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::StorageError;

pub mod runs;
pub mod versions;

pub use runs::{StoredException, VeeRun};
pub use versions::VeeValue;

const DAY_MS: i64 = 86_400_000;

/// `date=YYYY-MM-DD` of the UTC day `day` (days since 1970-01-01).
fn date_folder(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map(|d| d.format("date=%Y-%m-%d").to_string())
        .unwrap_or_else(|| "date=invalid".into())
}

/// The `date=…` folders under `root` whose UTC day meets `[from, to)`.
fn day_folders(root: &Path, from_ms: i64, to_ms: i64) -> Vec<PathBuf> {
    let Ok(days) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut folders: Vec<PathBuf> = days
        .flatten()
        .filter(|day| {
            let name = day.file_name().to_string_lossy().into_owned();
            let Some(date) = name
                .strip_prefix("date=")
                .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                return false;
            };
            let start = date
                .and_hms_opt(0, 0, 0)
                .map_or(i64::MIN, |t| t.and_utc().timestamp_millis());
            start < to_ms && start + DAY_MS > from_ms
        })
        .map(|day| day.path())
        .collect();
    folders.sort();
    folders
}

/// The complete Parquet files in `dir` (not the hidden ones being written), in name order.
fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing", dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && name.ends_with(".parquet")
        })
        .map(|f| f.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Writes `batch` as `dir/name`, whole before it is visible, and syncs the folder.
fn write_whole(dir: &Path, name: &str, batch: &RecordBatch) -> Result<PathBuf, StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io("creating", dir, e))?;
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let parquet_error = |source| StorageError::Parquet {
        path: tmp_path.clone(),
        source,
    };
    let file = File::create(&tmp_path).map_err(|e| StorageError::io("creating", &tmp_path, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).map_err(parquet_error)?;
    writer.write(batch).map_err(parquet_error)?;
    let inner = writer.into_inner().map_err(parquet_error)?;
    inner
        .sync_all()
        .map_err(|e| StorageError::io("syncing", &tmp_path, e))?;
    drop(inner);
    fs::rename(&tmp_path, &final_path).map_err(|e| StorageError::io("renaming", &tmp_path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing", dir, e))?;
    Ok(final_path)
}

/// Every batch of the Parquet file at `path`.
fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, StorageError> {
    let parquet_error = |source| StorageError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?
        .map(|batch| batch.map_err(|e| StorageError::io("reading", path, std::io::Error::other(e))))
        .collect()
}

/// A column of `batch` as the type VEE wrote it, or an error that names the file and column.
fn column<'b, T: 'static>(
    batch: &'b RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'b T, StorageError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            StorageError::io(
                "reading",
                path,
                std::io::Error::other(format!("no column {name} of the type VEE writes")),
            )
        })
}

/// A string as a ClickHouse literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// How `ts`-like columns of VEE's tables are read and bounded, by the server's time type:
/// (the column as Unix ms, a bound in ms as a literal of the column's type).
fn time_sql(times: crate::clickhouse::TimeColumns, column: &str) -> (String, fn(i64) -> String) {
    use crate::clickhouse::TimeColumns;
    match times {
        TimeColumns::Millis => (format!("toUnixTimestamp64Milli({column})"), |ms| {
            format!("fromUnixTimestamp64Milli(toInt64({ms}), 'UTC')")
        }),
        TimeColumns::Seconds => (format!("toInt64(toUnixTimestamp({column})) * 1000"), |ms| {
            format!("toDateTime({})", ms.div_euclid(1000).max(0))
        }),
    }
}

/// A meter id for a `WHERE`, refused unless it is one.
fn meter_filter(meter: Option<&str>) -> Result<String, StorageError> {
    match meter {
        Some(m) if meterflow_proto::is_valid_meter_id(m) => Ok(format!(" AND meter_id = '{m}'")),
        Some(m) => Err(StorageError::ReadRequest {
            reason: format!("{m:?} is not a meter id"),
        }),
        None => Ok(String::new()),
    }
}
