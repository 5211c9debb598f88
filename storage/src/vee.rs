//! The versions VEE writes, on the Parquet tree: `{data_dir}/readings_vee/date=YYYY-MM-DD/`
//! (the UTC date of each value), one file per run and date, `part-vee-{version}.parquet`,
//! written whole and renamed (a hidden `.tmp` before). Actual reads are never touched; a
//! value's latest version is the one of the greatest `version` (the run's time, Unix ms).
//!
//! Columns: meter_id, channel, ts (ms, UTC), value, unit, quality (`A`, `E`, `S`), rule,
//! method, version.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::StorageError;

/// One value of a VEE version.
#[derive(Debug, Clone, PartialEq)]
pub struct VeeValue {
    pub meter_id: String,
    pub channel: String,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
    /// `A`, `E` or `S`.
    pub quality: String,
    pub rule: String,
    pub method: String,
    /// The run that wrote it: its time, Unix ms.
    pub version: i64,
}

const FOLDER: &str = "readings_vee";
const DAY_MS: i64 = 86_400_000;

fn schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        text("meter_id"),
        text("channel"),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("value", DataType::Float64, false),
        text("unit"),
        text("quality"),
        text("rule"),
        text("method"),
        Field::new("version", DataType::Int64, false),
    ]))
}

fn date_folder(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map(|d| d.format("date=%Y-%m-%d").to_string())
        .unwrap_or_else(|| "date=invalid".into())
}

/// Writes `values` (one version) under `data_dir`: a file per UTC date, each whole before
/// it is visible. Returns the files.
pub fn write(data_dir: &Path, values: &[VeeValue]) -> Result<Vec<PathBuf>, StorageError> {
    let mut by_day: BTreeMap<i64, Vec<&VeeValue>> = BTreeMap::new();
    for v in values {
        by_day
            .entry(v.ts_ms.div_euclid(DAY_MS))
            .or_default()
            .push(v);
    }
    let mut files = Vec::new();
    for (day, values) in by_day {
        let dir = data_dir.join(FOLDER).join(date_folder(day));
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("creating", &dir, e))?;
        let version = values.first().map_or(0, |v| v.version);
        let final_path = dir.join(format!("part-vee-{version}.parquet"));
        let tmp_path = dir.join(format!(".part-vee-{version}.parquet.tmp"));
        let strings = |f: fn(&VeeValue) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(values.iter().map(|v| f(v))))
        };
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                strings(|v| &v.meter_id),
                strings(|v| &v.channel),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(values.iter().map(|v| v.ts_ms))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(
                    values.iter().map(|v| v.value),
                )),
                strings(|v| &v.unit),
                strings(|v| &v.quality),
                strings(|v| &v.rule),
                strings(|v| &v.method),
                Arc::new(Int64Array::from_iter_values(
                    values.iter().map(|v| v.version),
                )),
            ],
        )
        .map_err(|e| StorageError::io("building", &final_path, std::io::Error::other(e)))?;
        let file =
            File::create(&tmp_path).map_err(|e| StorageError::io("creating", &tmp_path, e))?;
        let mut writer =
            ArrowWriter::try_new(file, schema(), None).map_err(|source| StorageError::Parquet {
                path: tmp_path.clone(),
                source,
            })?;
        let parquet_error = |source| StorageError::Parquet {
            path: tmp_path.clone(),
            source,
        };
        writer.write(&batch).map_err(parquet_error)?;
        let inner = writer.into_inner().map_err(parquet_error)?;
        inner
            .sync_all()
            .map_err(|e| StorageError::io("syncing", &tmp_path, e))?;
        drop(inner);
        fs::rename(&tmp_path, &final_path)
            .map_err(|e| StorageError::io("renaming", &tmp_path, e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io("syncing", &dir, e))?;
        files.push(final_path);
    }
    Ok(files)
}

/// The latest version of every value with `ts` in `[from, to)`, of `meter` or all, in
/// (meter, channel, ts) order.
pub fn latest(
    data_dir: &Path,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<VeeValue>, StorageError> {
    let root = data_dir.join(FOLDER);
    let mut latest: BTreeMap<(String, String, i64), VeeValue> = BTreeMap::new();
    let Ok(days) = fs::read_dir(&root) else {
        return Ok(Vec::new());
    };
    for day in days.flatten() {
        let name = day.file_name().to_string_lossy().into_owned();
        let Some(date) = name.strip_prefix("date=") else {
            continue;
        };
        let Ok(date) = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d") else {
            continue;
        };
        let start = date
            .and_hms_opt(0, 0, 0)
            .map_or(i64::MIN, |t| t.and_utc().timestamp_millis());
        if start >= to_ms || start + DAY_MS <= from_ms {
            continue;
        }
        for file in fs::read_dir(day.path())
            .map_err(|e| StorageError::io("listing", day.path(), e))?
            .flatten()
        {
            let file_name = file.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !file_name.ends_with(".parquet") {
                continue;
            }
            read_file(&file.path(), from_ms, to_ms, meter, &mut latest)?;
        }
    }
    Ok(latest.into_values().collect())
}

fn read_file(
    path: &Path,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
    latest: &mut BTreeMap<(String, String, i64), VeeValue>,
) -> Result<(), StorageError> {
    let parquet_error = |source| StorageError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?;
    for batch in reader {
        let batch =
            batch.map_err(|e| StorageError::io("reading", path, std::io::Error::other(e)))?;
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                StorageError::io(
                    "reading",
                    path,
                    std::io::Error::other(format!("no column {name}")),
                )
            })
        };
        let text = |name: &str| -> Result<&StringArray, StorageError> {
            column(name)?.as_string_opt::<i32>().ok_or_else(|| {
                StorageError::io(
                    "reading",
                    path,
                    std::io::Error::other(format!("{name} is not text")),
                )
            })
        };
        let (meters, channels, units) = (text("meter_id")?, text("channel")?, text("unit")?);
        let (qualities, rules, methods) = (text("quality")?, text("rule")?, text("method")?);
        let ts = column("ts")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| StorageError::io("reading", path, std::io::Error::other("ts")))?;
        let values = column("value")?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| StorageError::io("reading", path, std::io::Error::other("value")))?;
        let versions = column("version")?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| StorageError::io("reading", path, std::io::Error::other("version")))?;
        for i in 0..batch.num_rows() {
            let t = ts.value(i);
            if !(from_ms..to_ms).contains(&t) || meter.is_some_and(|m| m != meters.value(i)) {
                continue;
            }
            let v = VeeValue {
                meter_id: meters.value(i).to_string(),
                channel: channels.value(i).to_string(),
                ts_ms: t,
                value: values.value(i),
                unit: units.value(i).to_string(),
                quality: qualities.value(i).to_string(),
                rule: rules.value(i).to_string(),
                method: methods.value(i).to_string(),
                version: versions.value(i),
            };
            let key = (v.meter_id.clone(), v.channel.clone(), t);
            if latest.get(&key).is_none_or(|old| v.version > old.version) {
                latest.insert(key, v);
            }
        }
    }
    Ok(())
}

/// Writes `values` (one version) to ClickHouse's `readings_vee`.
pub async fn write_clickhouse(
    config: &crate::clickhouse::ClickHouseConfig,
    values: &[VeeValue],
) -> Result<(), StorageError> {
    use crate::clickhouse::{ClickHouseError, TimeColumns};
    let times = crate::clickhouse::time_columns(config).await?;
    let text = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let client = config.client()?;
    for chunk in values.chunks(10_000) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|v| {
                let ts = match times {
                    TimeColumns::Millis => {
                        format!("fromUnixTimestamp64Milli(toInt64({}), 'UTC')", v.ts_ms)
                    }
                    TimeColumns::Seconds => format!("toDateTime({})", v.ts_ms.div_euclid(1000)),
                };
                format!(
                    "({}, {}, {ts}, {:?}, {}, {}, {}, {}, {})",
                    text(&v.meter_id),
                    text(&v.channel),
                    v.value,
                    text(&v.unit),
                    text(&v.quality),
                    text(&v.rule),
                    text(&v.method),
                    v.version
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO {}.readings_vee (meter_id, channel, ts, value, unit, quality, rule, method, version) VALUES {}",
            config.database,
            rows.join(", ")
        );
        client
            .query(&sql)
            .execute()
            .await
            .map_err(|source| ClickHouseError {
                action: "writing the VEE version",
                source,
            })?;
    }
    Ok(())
}

/// [`latest`] on ClickHouse's `readings_vee`.
pub async fn latest_clickhouse(
    config: &crate::clickhouse::ClickHouseConfig,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<VeeValue>, StorageError> {
    use crate::clickhouse::TimeColumns;
    let times = crate::clickhouse::time_columns(config).await?;
    let (ts_ms, bound) = match times {
        TimeColumns::Millis => (
            "toUnixTimestamp64Milli(ts)".to_string(),
            (|ms: i64| format!("fromUnixTimestamp64Milli(toInt64({ms}), 'UTC')"))
                as fn(i64) -> String,
        ),
        TimeColumns::Seconds => (
            "toInt64(toUnixTimestamp(ts)) * 1000".to_string(),
            (|ms: i64| format!("toDateTime({})", ms.div_euclid(1000).max(0))) as fn(i64) -> String,
        ),
    };
    let meter_filter = match meter {
        Some(m) if meterflow_proto::is_valid_meter_id(m) => format!(" AND meter_id = '{m}'"),
        Some(m) => {
            return Err(StorageError::ReadRequest {
                reason: format!("{m:?} is not a meter id"),
            })
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT meter_id, channel, {ts_ms} AS ts_ms, argMax(value, version) AS v_value, \
           argMax(unit, version) AS v_unit, argMax(quality, version) AS v_quality, \
           argMax(rule, version) AS v_rule, argMax(method, version) AS v_method, \
           max(version) AS v_version \
         FROM {db}.readings_vee \
         WHERE ts >= {from} AND ts < {to}{meter_filter} \
         GROUP BY meter_id, channel, ts \
         ORDER BY meter_id, channel, ts_ms",
        db = config.database,
        from = bound(from_ms),
        to = bound(to_ms),
    );
    let table = crate::analytics::Table::from_tsv(&crate::analytics::run_text(config, &sql).await?);
    let bad = |what: &str| StorageError::ReadRequest {
        reason: format!("readings_vee: a row without its {what}"),
    };
    (0..table.rows.len())
        .map(|row| {
            let get = |c: &str| table.get(row, c).ok_or_else(|| bad(c));
            Ok(VeeValue {
                meter_id: get("meter_id")?.to_string(),
                channel: get("channel")?.to_string(),
                ts_ms: get("ts_ms")?.parse().map_err(|_| bad("ts_ms"))?,
                value: get("v_value")?.parse().map_err(|_| bad("value"))?,
                unit: get("v_unit")?.to_string(),
                quality: get("v_quality")?.to_string(),
                rule: get("v_rule")?.to_string(),
                method: get("v_method")?.to_string(),
                version: get("v_version")?.parse().map_err(|_| bad("version"))?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(meter: &str, ts: i64, value: f64, quality: &str, version: i64) -> VeeValue {
        VeeValue {
            meter_id: meter.into(),
            channel: "1-0:1.8.0".into(),
            ts_ms: ts,
            value,
            unit: "kWh".into(),
            quality: quality.into(),
            rule: "gap".into(),
            method: "linear".into(),
            version,
        }
    }

    #[test]
    fn the_latest_version_of_each_value_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_710_892_800_000; // 2024-03-20
        let first = vec![
            value("M1", day + 1_000, 1.5, "E", 10),
            value("M1", day + DAY_MS + 1_000, 2.5, "E", 10),
            value("M2", day + 2_000, 7.0, "S", 10),
        ];
        let files = write(dir.path(), &first).unwrap();
        assert_eq!(files.len(), 2, "one file per date");
        // A later run: M1's first value withdrawn (an actual read came), a new estimate.
        let second = vec![
            value("M1", day + 1_000, 1.6, "A", 20),
            value("M1", day + 3_000, 3.0, "E", 20),
        ];
        write(dir.path(), &second).unwrap();
        let got = latest(dir.path(), day, day + DAY_MS, None).unwrap();
        assert_eq!(
            got,
            vec![
                value("M1", day + 1_000, 1.6, "A", 20),
                value("M1", day + 3_000, 3.0, "E", 20),
                value("M2", day + 2_000, 7.0, "S", 10),
            ]
        );
        let only = latest(dir.path(), day, day + 2 * DAY_MS, Some("M1")).unwrap();
        assert_eq!(only.len(), 3);
        assert!(latest(tempfile::tempdir().unwrap().path(), 0, 1, None)
            .unwrap()
            .is_empty());
    }
}
