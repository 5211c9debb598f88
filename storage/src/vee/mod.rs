//! What VEE keeps, on the Parquet tree and in ClickHouse alike; actual reads are never
//! touched.
//!
//! - [`versions`]: `readings_vee`, the estimates and substitutes of each run as a version of
//!   the values they mend; a value's latest version is the one of the greatest `version`.
//! - [`runs`]: `vee_runs`, one row per run (its period, meters, parameters, what it found),
//!   and `vee_exceptions`, the exceptions each run found. A period's exceptions are those
//!   of the latest run that judged it, so a rerun after late reads came replaces them.
//!
//! On the tree every file is written whole under a hidden `.tmp` name, synced, and renamed
//! (`crate::whole_file`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::StorageError;

pub(crate) use crate::whole_file::{column, parquet_files, read_batches, write_whole};

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
