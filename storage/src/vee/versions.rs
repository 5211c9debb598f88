//! `readings_vee`, the versions VEE writes: on the Parquet tree
//! `{data_dir}/readings_vee/date=YYYY-MM-DD/` (the UTC date of each value), one file per run
//! and date, `part-vee-{version}.parquet`; in ClickHouse a ReplacingMergeTree(version). A
//! value's latest version is the one of the greatest `version` (the run's time, Unix ms).
//!
//! Columns: meter_id, channel, ts (ms, UTC), value, unit, quality (`A`, `E`, `S`), rule,
//! method, version, vee_run (the run's time and parameters, in words).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use super::{column, day_folders, meter_filter, parquet_files, read_batches, write_whole, DAY_MS};
use crate::clickhouse::{sql_text, time_sql};
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
    /// The run that wrote it, in words: its time and parameters (`vee_runs` has the rest).
    pub vee_run: String,
}

const FOLDER: &str = "readings_vee";

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
        text("vee_run"),
    ]))
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
        let dir = data_dir.join(FOLDER).join(super::date_folder(day));
        let version = values.first().map_or(0, |v| v.version);
        let name = format!("part-vee-{version}.parquet");
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
                strings(|v| &v.vee_run),
            ],
        )
        .map_err(|e| StorageError::io("building", dir.join(&name), std::io::Error::other(e)))?;
        files.push(write_whole(&dir, &name, &batch)?);
    }
    Ok(files)
}

/// The latest version of every value with `ts` in `[from, to)`, of `meter` or all, in
/// (meter, channel, ts) order. A run cut short may have written part of its version (a
/// ReplacingMergeTree keeps only the newest version of a value once its parts merge, so
/// older ones cannot be gone back to); the next run, which compares with what is stored,
/// writes what differs.
pub fn latest(
    data_dir: &Path,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<VeeValue>, StorageError> {
    let mut latest: BTreeMap<(String, String, i64), VeeValue> = BTreeMap::new();
    for day in day_folders(&data_dir.join(FOLDER), from_ms, to_ms) {
        for file in parquet_files(&day)? {
            read_file(&file, from_ms, to_ms, meter, &mut latest)?;
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
    for batch in read_batches(path)? {
        let text = |name: &str| column::<StringArray>(&batch, name, path);
        let (meters, channels, units) = (text("meter_id")?, text("channel")?, text("unit")?);
        let (qualities, rules, methods) = (text("quality")?, text("rule")?, text("method")?);
        // Files of a version before `vee_run` existed have none.
        let runs = batch
            .column_by_name("vee_run")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let ts = column::<TimestampMillisecondArray>(&batch, "ts", path)?;
        let values = column::<Float64Array>(&batch, "value", path)?;
        let versions = column::<Int64Array>(&batch, "version", path)?;
        for i in 0..batch.num_rows() {
            let t = ts.value(i);
            if !(from_ms..to_ms).contains(&t) || meter.is_some_and(|m| m != meters.value(i)) {
                continue;
            }
            let key = (
                meters.value(i).to_string(),
                channels.value(i).to_string(),
                t,
            );
            if latest
                .get(&key)
                .is_some_and(|old| old.version >= versions.value(i))
            {
                continue;
            }
            let v = VeeValue {
                meter_id: key.0.clone(),
                channel: key.1.clone(),
                ts_ms: t,
                value: values.value(i),
                unit: units.value(i).to_string(),
                quality: qualities.value(i).to_string(),
                rule: rules.value(i).to_string(),
                method: methods.value(i).to_string(),
                version: versions.value(i),
                vee_run: runs.map(|r| r.value(i).to_string()).unwrap_or_default(),
            };
            latest.insert(key, v);
        }
    }
    Ok(())
}

/// The statements that insert `values` into `db.readings_vee`, 10 000 rows each.
#[doc(hidden)]
pub fn insert_sql(
    db: &str,
    times: crate::clickhouse::TimeColumns,
    values: &[VeeValue],
) -> Vec<String> {
    let (_, time) = time_sql(times, "ts");
    values
        .chunks(10_000)
        .map(|chunk| {
            let rows: Vec<String> = chunk
                .iter()
                .map(|v| {
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                        sql_text(&v.meter_id),
                        sql_text(&v.channel),
                        time(v.ts_ms),
                        // A withdrawal with no read behind it is NaN: `nan` to ClickHouse.
                        if v.value.is_nan() {
                            "nan".to_string()
                        } else {
                            format!("{:?}", v.value)
                        },
                        sql_text(&v.unit),
                        sql_text(&v.quality),
                        sql_text(&v.rule),
                        sql_text(&v.method),
                        v.version,
                        sql_text(&v.vee_run),
                    )
                })
                .collect();
            format!(
                "INSERT INTO {db}.readings_vee (meter_id, channel, ts, value, unit, quality, rule, method, version, vee_run) VALUES {}",
                rows.join(", ")
            )
        })
        .collect()
}

/// Writes `values` (one version) to ClickHouse's `readings_vee`.
pub async fn write_clickhouse(
    config: &crate::clickhouse::ClickHouseConfig,
    values: &[VeeValue],
) -> Result<(), StorageError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let client = config.client()?;
    for sql in insert_sql(&config.database, times, values) {
        client.query(&sql).execute().await.map_err(|source| {
            crate::clickhouse::ClickHouseError {
                action: "writing the VEE version",
                source,
            }
        })?;
    }
    Ok(())
}

/// The query behind [`latest_clickhouse`] (TabSeparatedWithNames, read by [`latest_from`]).
#[doc(hidden)]
pub fn latest_sql(
    db: &str,
    times: crate::clickhouse::TimeColumns,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<String, StorageError> {
    let (ts_ms, bound) = time_sql(times, "ts");
    let meter_filter = meter_filter(meter)?;
    Ok(format!(
        "SELECT meter_id, channel, {ts_ms} AS ts_ms, argMax(value, version) AS v_value, \
           argMax(unit, version) AS v_unit, argMax(quality, version) AS v_quality, \
           argMax(rule, version) AS v_rule, argMax(method, version) AS v_method, \
           max(version) AS v_version, argMax(vee_run, version) AS v_run \
         FROM {db}.readings_vee \
         WHERE ts >= {from} AND ts < {to}{meter_filter} \
         GROUP BY meter_id, channel, ts \
         ORDER BY meter_id, channel, ts_ms",
        from = bound(from_ms),
        to = bound(to_ms),
    ))
}

/// The values of [`latest_sql`]'s answer.
#[doc(hidden)]
pub fn latest_from(table: &crate::analytics::Table) -> Result<Vec<VeeValue>, StorageError> {
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
                vee_run: get("v_run")?.to_string(),
            })
        })
        .collect()
}

/// [`latest`] on ClickHouse's `readings_vee`.
pub async fn latest_clickhouse(
    config: &crate::clickhouse::ClickHouseConfig,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<VeeValue>, StorageError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let sql = latest_sql(&config.database, times, from_ms, to_ms, meter)?;
    latest_from(&crate::analytics::Table::from_tsv(
        &crate::analytics::run_text(config, &sql).await?,
    ))
}

/// "As billed": `series` (actual reads) overlaid by the latest VEE values of its meter and
/// channel (`values`, any order): an estimate (`E`) fills the place of a missing read (a
/// read that came after it was made wins), a substitute (`S`) replaces a failed one; an `A`
/// value (a withdrawn estimate) changes nothing; a register's estimate that no longer lies
/// between the actual reads around it (reads have filled part of its gap since) is left
/// out. Estimates have no receipt (`received_at` 0). Returns the times of the points that
/// are now estimates or substitutes.
pub fn overlay(series: &mut crate::readings::Series, values: &[VeeValue]) -> Vec<i64> {
    let mut mended: Vec<(i64, f64)> = values
        .iter()
        .filter(|v| v.meter_id == series.meter_id && v.channel == series.channel)
        .filter(|v| v.quality == "E" || v.quality == "S")
        .map(|v| (v.ts_ms, v.value))
        .collect();
    if mended.is_empty() {
        return Vec::new();
    }
    mended.sort_by_key(|&(ts, _)| ts);
    mended.dedup_by_key(|&mut (ts, _)| ts);
    let substitutes: std::collections::BTreeSet<i64> = values
        .iter()
        .filter(|v| v.meter_id == series.meter_id && v.channel == series.channel)
        .filter(|v| v.quality == "S")
        .map(|v| v.ts_ms)
        .collect();
    let reads: std::collections::BTreeSet<i64> = series.points.iter().map(|p| p.0).collect();
    let has_received = series.received_at.len() == series.points.len();
    let mut points = Vec::with_capacity(series.points.len() + mended.len());
    let mut received = Vec::with_capacity(points.capacity());
    let (mut i, mut j) = (0, 0);
    while i < series.points.len() || j < mended.len() {
        let read = series.points.get(i).copied();
        let vee = mended.get(j).copied();
        let at = |k: usize| series.received_at.get(k).copied().unwrap_or(0);
        match (read, vee) {
            // A substitute replaces the read; an estimate gives way to a read that came
            // after it was made (until a rerun withdraws it).
            (Some(r), Some(v)) if r.0 == v.0 => {
                points.push(if substitutes.contains(&v.0) { v } else { r });
                received.push(at(i));
                i += 1;
                j += 1;
            }
            (Some(r), Some(v)) if v.0 < r.0 => {
                points.push(v);
                received.push(0);
                j += 1;
            }
            (Some(r), _) => {
                points.push(r);
                received.push(at(i));
                i += 1;
            }
            (None, Some(v)) => {
                points.push(v);
                received.push(0);
                j += 1;
            }
            (None, None) => break,
        }
    }
    // A register's estimates made for a gap that reads have since filled in part were
    // anchored on reads now further away: one that no longer lies between the actual reads
    // around it would make the register fall (a fall adds nothing, the rise after it is
    // counted again), so it gives way to the reads until the next run estimates again.
    let mut dropped = std::collections::BTreeSet::new();
    if crate::readings::is_cumulative_register(&series.channel) {
        let estimate = |t: i64| !reads.contains(&t) && !substitutes.contains(&t);
        let mut keep = vec![true; points.len()];
        let mut prev_actual: Option<f64> = None;
        for (k, p) in points.iter().enumerate() {
            if estimate(p.0) {
                if prev_actual.is_some_and(|a| p.1 < a) {
                    keep[k] = false;
                }
            } else {
                prev_actual = Some(p.1);
            }
        }
        let mut next_actual: Option<f64> = None;
        for (k, p) in points.iter().enumerate().rev() {
            if estimate(p.0) {
                if next_actual.is_some_and(|b| p.1 > b) {
                    keep[k] = false;
                }
            } else {
                next_actual = Some(p.1);
            }
        }
        let mut k = 0;
        points.retain(|p| {
            let kept = keep[k];
            if !kept {
                dropped.insert(p.0);
            }
            k += 1;
            kept
        });
        let mut k = 0;
        received.retain(|_| {
            let kept = keep[k];
            k += 1;
            kept
        });
    }
    series.points = points;
    if has_received {
        series.received_at = received;
    }
    mended
        .into_iter()
        .map(|(ts, _)| ts)
        .filter(|ts| substitutes.contains(ts) || !reads.contains(ts))
        .filter(|ts| !dropped.contains(ts))
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
            vee_run: format!("run {version}"),
        }
    }

    #[test]
    fn as_billed_fills_gaps_replaces_failed_values_and_leaves_actual_reads() {
        let mut series = crate::readings::Series {
            meter_id: "M1".into(),
            channel: "1-0:1.8.0".into(),
            unit: "kWh".into(),
            points: vec![(10, 1.0), (20, 99.0), (40, 4.0)],
            other_units: vec![],
            received_at: vec![11, 21, 41],
            conflicts: vec![],
        };
        let mut substitute = value("M1", 20, 2.0, "S", 5);
        substitute.method = "substitute".into();
        let values = vec![
            value("M1", 30, 3.0, "E", 5),
            substitute,
            value("M1", 5, 0.5, "E", 5),
            value("M1", 50, 5.0, "A", 5),
            value("M2", 30, 7.0, "E", 5),
            // An estimate made before the read at 40 came: the read wins.
            value("M1", 40, 3.5, "E", 5),
        ];
        let mended = overlay(&mut series, &values);
        assert_eq!(mended, vec![5, 20, 30]);
        assert_eq!(
            series.points,
            vec![(5, 0.5), (10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]
        );
        assert_eq!(series.received_at, vec![0, 11, 21, 0, 41]);
        let before = series.clone();
        assert!(overlay(&mut series, &[]).is_empty());
        assert_eq!(series, before);
    }

    /// Round 2 of the review: reads came for part of an estimated gap (a = 100 at 0, b = 108
    /// at 80, estimates 102, 104, 106 at 20, 40, 60; then a read of 107 at 30). The estimate
    /// at 20 (102) still fits; 40 and 60 (104, 106) would make the register fall after 107.
    #[test]
    fn estimates_a_later_read_overtook_give_way() {
        let mut series = crate::readings::Series {
            meter_id: "M1".into(),
            channel: "1-0:1.8.0".into(),
            unit: "kWh".into(),
            points: vec![(0, 100.0), (30, 107.0), (80, 108.0)],
            other_units: vec![],
            received_at: vec![1, 31, 81],
            conflicts: vec![],
        };
        let values = vec![
            value("M1", 20, 102.0, "E", 5),
            value("M1", 40, 104.0, "E", 5),
            value("M1", 60, 106.0, "E", 5),
        ];
        assert_eq!(overlay(&mut series, &values), vec![20]);
        assert_eq!(
            series.points,
            vec![(0, 100.0), (20, 102.0), (30, 107.0), (80, 108.0)]
        );
        assert_eq!(series.received_at, vec![1, 0, 31, 81]);
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
        for run_id in [10, 20] {
            let run = super::super::runs::VeeRun {
                run_id,
                from_ms: day,
                to_ms: day + DAY_MS,
                timezone: "UTC".into(),
                meter: String::new(),
                trigger: "command".into(),
                parameters: "{}".into(),
                meters: 2,
                exceptions: 0,
                mended: 0,
                version_written: true,
            };
            super::super::runs::write_run(dir.path(), &run, &[]).unwrap();
        }
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

    /// A file of a version written before `vee_run` existed reads, with an empty `vee_run`.
    #[test]
    fn a_version_without_vee_run_reads() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_710_892_800_000; // 2024-03-20
        let mut v = value("M1", day + 1_000, 1.5, "E", 10);
        write(dir.path(), std::slice::from_ref(&v)).unwrap();
        // Rewrite the file without the column, as 84837fe wrote it.
        let file = dir
            .path()
            .join("readings_vee/date=2024-03-20/part-vee-10.parquet");
        let batch = super::super::read_batches(&file).unwrap().remove(0);
        let old = batch.project(&[0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        std::fs::remove_file(&file).unwrap();
        super::super::write_whole(file.parent().unwrap(), "part-vee-10.parquet", &old).unwrap();
        let run = super::super::runs::VeeRun {
            run_id: 10,
            from_ms: day,
            to_ms: day + DAY_MS,
            timezone: "UTC".into(),
            meter: String::new(),
            trigger: "command".into(),
            parameters: "{}".into(),
            meters: 1,
            exceptions: 0,
            mended: 1,
            version_written: true,
        };
        super::super::runs::write_run(dir.path(), &run, &[]).unwrap();
        v.vee_run = String::new();
        assert_eq!(
            latest(dir.path(), day, day + DAY_MS, None).unwrap(),
            vec![v]
        );
    }
}
