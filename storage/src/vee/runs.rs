//! `vee_runs` and `vee_exceptions`: what each VEE run judged (its period, its meters, its
//! parameters) and what it found there.
//!
//! A period's exceptions are those of the latest run that judged it: an exception of run R
//! stands unless a later run judged its meter at its start ([`standing`]). So a rerun after
//! late reads came takes back what they mended, and a run over one meter replaces that
//! meter's findings only. Each run's row is written after its exceptions: a run cut short
//! leaves exceptions that no run row names, which readers skip.
//!
//! On the tree: `{data_dir}/vee_runs/run-{run_id}.parquet` (one row), and
//! `{data_dir}/vee_exceptions/date=YYYY-MM-DD/part-{run_id}.parquet` (by the UTC date of
//! each exception's start). In ClickHouse: the tables `vee_runs` and `vee_exceptions`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Date32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use super::{column, day_folders, meter_filter, parquet_files, read_batches, write_whole, DAY_MS};
use crate::clickhouse::{sql_text, time_sql};
use crate::clickhouse::{ClickHouseConfig, ClickHouseError};
use crate::StorageError;

/// One run of VEE.
#[derive(Debug, Clone, PartialEq)]
pub struct VeeRun {
    /// When it ran, Unix ms; also the `version` of the values it wrote.
    pub run_id: i64,
    /// The period judged, `[from, to)`, Unix ms (local midnights of `timezone`).
    pub from_ms: i64,
    pub to_ms: i64,
    pub timezone: String,
    /// The one meter judged, or empty for every meter.
    pub meter: String,
    /// `command` (`meterflow vee`) or `schedule` (`vee.schedule` in `serve`).
    pub trigger: String,
    /// `[vee]` as it ran, JSON.
    pub parameters: String,
    /// Meters judged, exceptions found, values estimated or substituted (mended).
    pub meters: u64,
    pub exceptions: u64,
    pub mended: u64,
    /// Whether it wrote a version (`false`: its values were the latest version's already).
    pub version_written: bool,
}

impl VeeRun {
    /// Whether this run judged `meter` at `at`.
    pub fn judged(&self, meter: &str, at: i64) -> bool {
        (self.meter.is_empty() || self.meter == meter) && (self.from_ms..self.to_ms).contains(&at)
    }
}

/// An exception as a run stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredException {
    pub run_id: i64,
    /// The local day (in the run's time zone) the exception is of: each is cut into days.
    pub day: chrono::NaiveDate,
    pub meter_id: String,
    pub channel: String,
    pub rule: String,
    /// `[from, to]`, Unix ms.
    pub from_ms: i64,
    pub to_ms: i64,
    pub detail: String,
    /// Whether a value of its span was estimated or substituted...
    pub estimated: bool,
    /// ...how many, and how (`linear`, `like_day`, ...; empty if none).
    pub mended: u32,
    pub method: String,
}

/// The exceptions that stand: those of runs that finished (have a row in `runs`), less those
/// a later run judged again (its meter at its start).
pub fn standing(runs: &[VeeRun], exceptions: Vec<StoredException>) -> Vec<StoredException> {
    let finished: BTreeSet<i64> = runs.iter().map(|r| r.run_id).collect();
    let mut kept: Vec<StoredException> = exceptions
        .into_iter()
        .filter(|e| finished.contains(&e.run_id))
        .filter(|e| {
            !runs
                .iter()
                .any(|r| r.run_id > e.run_id && r.judged(&e.meter_id, e.from_ms))
        })
        .collect();
    kept.sort_by(|a, b| {
        (&a.meter_id, &a.channel, a.from_ms, &a.rule, a.to_ms).cmp(&(
            &b.meter_id,
            &b.channel,
            b.from_ms,
            &b.rule,
            b.to_ms,
        ))
    });
    kept
}

/// The first instant of `[from, to)` that no run judged for `meter` (every meter when
/// `None`: a run over all of them), or `None` when runs cover it all.
pub fn first_unjudged(
    runs: &[VeeRun],
    meter: Option<&str>,
    from_ms: i64,
    to_ms: i64,
) -> Option<i64> {
    let mut spans: Vec<(i64, i64)> = runs
        .iter()
        .filter(|r| r.meter.is_empty() || meter.is_some_and(|m| m == r.meter))
        .map(|r| (r.from_ms, r.to_ms))
        .collect();
    spans.sort();
    let mut at = from_ms;
    for (from, to) in spans {
        if from > at {
            break;
        }
        at = at.max(to);
        if at >= to_ms {
            return None;
        }
    }
    (at < to_ms).then_some(at)
}

const RUNS: &str = "vee_runs";
const EXCEPTIONS: &str = "vee_exceptions";
/// How far before a query's start an exception that reaches into it may begin: stored
/// exceptions are cut into local days (at most 25 hours).
const REACH_MS: i64 = 2 * DAY_MS;

fn utc_ms(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn runs_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Int64, false),
        utc_ms("period_from"),
        utc_ms("period_to"),
        text("timezone"),
        text("meter"),
        text("trigger"),
        text("parameters"),
        Field::new("meters", DataType::UInt64, false),
        Field::new("exceptions", DataType::UInt64, false),
        Field::new("mended", DataType::UInt64, false),
        Field::new("version_written", DataType::Boolean, false),
    ]))
}

fn exceptions_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Int64, false),
        Field::new("day", DataType::Date32, false),
        text("meter_id"),
        text("channel"),
        text("rule"),
        utc_ms("from_ts"),
        utc_ms("to_ts"),
        text("detail"),
        Field::new("estimated", DataType::Boolean, false),
        Field::new("mended", DataType::UInt32, false),
        text("method"),
    ]))
}

fn build(
    schema: Arc<Schema>,
    columns: Vec<ArrayRef>,
    path: &Path,
) -> Result<RecordBatch, StorageError> {
    RecordBatch::try_new(schema, columns)
        .map_err(|e| StorageError::io("building", path, std::io::Error::other(e)))
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// Stores a run on the tree: its exceptions, then its row. Returns the files.
pub fn write_run(
    data_dir: &Path,
    run: &VeeRun,
    exceptions: &[StoredException],
) -> Result<Vec<PathBuf>, StorageError> {
    let mut by_day: BTreeMap<i64, Vec<&StoredException>> = BTreeMap::new();
    for e in exceptions {
        by_day
            .entry(e.from_ms.div_euclid(DAY_MS))
            .or_default()
            .push(e);
    }
    let mut files = Vec::new();
    let name = format!("part-{}.parquet", run.run_id);
    for (day, list) in by_day {
        let dir = data_dir.join(EXCEPTIONS).join(super::date_folder(day));
        let strings = |f: fn(&StoredException) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(list.iter().map(|e| f(e))))
        };
        let batch = build(
            exceptions_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(list.iter().map(|e| e.run_id))),
                Arc::new(Date32Array::from_iter_values(
                    list.iter().map(|e| Date32Type::from_naive_date(e.day)),
                )),
                strings(|e| &e.meter_id),
                strings(|e| &e.channel),
                strings(|e| &e.rule),
                times(list.iter().map(|e| e.from_ms)),
                times(list.iter().map(|e| e.to_ms)),
                strings(|e| &e.detail),
                Arc::new(BooleanArray::from_iter(
                    list.iter().map(|e| Some(e.estimated)),
                )),
                Arc::new(UInt32Array::from_iter_values(list.iter().map(|e| e.mended))),
                strings(|e| &e.method),
            ],
            &dir.join(&name),
        )?;
        files.push(write_whole(&dir, &name, &batch)?);
    }
    let dir = data_dir.join(RUNS);
    let name = format!("run-{}.parquet", run.run_id);
    let one = |s: &str| -> ArrayRef { Arc::new(StringArray::from_iter_values([s])) };
    let batch = build(
        runs_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values([run.run_id])),
            times([run.from_ms].into_iter()),
            times([run.to_ms].into_iter()),
            one(&run.timezone),
            one(&run.meter),
            one(&run.trigger),
            one(&run.parameters),
            Arc::new(UInt64Array::from_iter_values([run.meters])),
            Arc::new(UInt64Array::from_iter_values([run.exceptions])),
            Arc::new(UInt64Array::from_iter_values([run.mended])),
            Arc::new(BooleanArray::from_iter([Some(run.version_written)])),
        ],
        &dir.join(&name),
    )?;
    files.push(write_whole(&dir, &name, &batch)?);
    Ok(files)
}

/// Every finished run on the tree, oldest first.
pub fn runs(data_dir: &Path) -> Result<Vec<VeeRun>, StorageError> {
    let mut runs = Vec::new();
    for path in parquet_files(&data_dir.join(RUNS))? {
        for batch in read_batches(&path)? {
            let text = |name: &str| column::<StringArray>(&batch, name, &path);
            let count = |name: &str| column::<UInt64Array>(&batch, name, &path);
            let time = |name: &str| column::<TimestampMillisecondArray>(&batch, name, &path);
            let (ids, from, to) = (
                column::<Int64Array>(&batch, "run_id", &path)?,
                time("period_from")?,
                time("period_to")?,
            );
            let (zones, meters_filter, triggers, parameters) = (
                text("timezone")?,
                text("meter")?,
                text("trigger")?,
                text("parameters")?,
            );
            let (meters, exceptions, mended) =
                (count("meters")?, count("exceptions")?, count("mended")?);
            let written = column::<BooleanArray>(&batch, "version_written", &path)?;
            for i in 0..batch.num_rows() {
                runs.push(VeeRun {
                    run_id: ids.value(i),
                    from_ms: from.value(i),
                    to_ms: to.value(i),
                    timezone: zones.value(i).to_string(),
                    meter: meters_filter.value(i).to_string(),
                    trigger: triggers.value(i).to_string(),
                    parameters: parameters.value(i).to_string(),
                    meters: meters.value(i),
                    exceptions: exceptions.value(i),
                    mended: mended.value(i),
                    version_written: written.value(i),
                });
            }
        }
    }
    runs.sort_by_key(|r| r.run_id);
    Ok(runs)
}

/// The exceptions stored on the tree whose span meets `[from, to)`, of `meter` or all, as
/// every run wrote them (see [`standing`]).
pub fn exceptions(
    data_dir: &Path,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<StoredException>, StorageError> {
    let mut found = Vec::new();
    for day in day_folders(&data_dir.join(EXCEPTIONS), from_ms - REACH_MS, to_ms) {
        for path in parquet_files(&day)? {
            for batch in read_batches(&path)? {
                let text = |name: &str| column::<StringArray>(&batch, name, &path);
                let time = |name: &str| column::<TimestampMillisecondArray>(&batch, name, &path);
                let ids = column::<Int64Array>(&batch, "run_id", &path)?;
                let days = column::<Date32Array>(&batch, "day", &path)?;
                let (meters, channels, rules) =
                    (text("meter_id")?, text("channel")?, text("rule")?);
                let (details, methods) = (text("detail")?, text("method")?);
                let (from, to) = (time("from_ts")?, time("to_ts")?);
                let estimated = column::<BooleanArray>(&batch, "estimated", &path)?;
                let mended = column::<UInt32Array>(&batch, "mended", &path)?;
                for i in 0..batch.num_rows() {
                    if from.value(i) >= to_ms
                        || to.value(i) < from_ms
                        || meter.is_some_and(|m| m != meters.value(i))
                    {
                        continue;
                    }
                    found.push(StoredException {
                        run_id: ids.value(i),
                        day: Date32Type::to_naive_date_opt(days.value(i)).unwrap_or_default(),
                        meter_id: meters.value(i).to_string(),
                        channel: channels.value(i).to_string(),
                        rule: rules.value(i).to_string(),
                        from_ms: from.value(i),
                        to_ms: to.value(i),
                        detail: details.value(i).to_string(),
                        estimated: estimated.value(i),
                        mended: mended.value(i),
                        method: methods.value(i).to_string(),
                    });
                }
            }
        }
    }
    Ok(found)
}

fn clickhouse_error(
    action: &'static str,
) -> impl FnOnce(clickhouse::error::Error) -> ClickHouseError {
    move |source| ClickHouseError { action, source }
}

/// The statements that store a run in `db`: its exceptions (10 000 rows each), then its row.
#[doc(hidden)]
pub fn insert_sql(
    db: &str,
    times: crate::clickhouse::TimeColumns,
    run: &VeeRun,
    exceptions: &[StoredException],
) -> Vec<String> {
    let (_, time) = time_sql(times, "ts");
    let mut statements: Vec<String> = exceptions
        .chunks(10_000)
        .map(|chunk| {
            let rows: Vec<String> = chunk
                .iter()
                .map(|e| {
                    format!(
                        "({}, toDate('{}'), {}, {}, {}, {}, {}, {}, {}, {}, {})",
                        e.run_id,
                        e.day.format("%Y-%m-%d"),
                        sql_text(&e.meter_id),
                        sql_text(&e.channel),
                        sql_text(&e.rule),
                        time(e.from_ms),
                        time(e.to_ms),
                        sql_text(&e.detail),
                        u8::from(e.estimated),
                        e.mended,
                        sql_text(&e.method),
                    )
                })
                .collect();
            format!(
                "INSERT INTO {db}.vee_exceptions (run_id, day, meter_id, channel, rule, from_ts, to_ts, detail, estimated, mended, method) VALUES {}",
                rows.join(", ")
            )
        })
        .collect();
    statements.push(format!(
        "INSERT INTO {db}.vee_runs (run_id, period_from, period_to, timezone, meter, trigger, parameters, meters, exceptions, mended, version_written) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
        run.run_id,
        time(run.from_ms),
        time(run.to_ms),
        sql_text(&run.timezone),
        sql_text(&run.meter),
        sql_text(&run.trigger),
        sql_text(&run.parameters),
        run.meters,
        run.exceptions,
        run.mended,
        u8::from(run.version_written),
    ));
    statements
}

/// [`write_run`] to ClickHouse: the exceptions, then the run's row.
pub async fn write_run_clickhouse(
    config: &ClickHouseConfig,
    run: &VeeRun,
    exceptions: &[StoredException],
) -> Result<(), StorageError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let client = config.client()?;
    for sql in insert_sql(&config.database, times, run, exceptions) {
        client
            .query(&sql)
            .execute()
            .await
            .map_err(clickhouse_error("writing the VEE run"))?;
    }
    Ok(())
}

fn parse<T: std::str::FromStr>(
    table: &crate::analytics::Table,
    row: usize,
    column: &str,
    what: &str,
) -> Result<T, StorageError> {
    table
        .get(row, column)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| StorageError::ReadRequest {
            reason: format!("{what}: a row without a readable {column}"),
        })
}

/// The query behind [`runs_clickhouse`] (read by [`runs_from`]).
#[doc(hidden)]
pub fn runs_sql(db: &str, times: crate::clickhouse::TimeColumns) -> String {
    let (from, _) = time_sql(times, "period_from");
    let (to, _) = time_sql(times, "period_to");
    format!(
        "SELECT run_id, {from} AS from_ms, {to} AS to_ms, timezone, meter, trigger, parameters, \
           meters, exceptions, mended, version_written \
         FROM {db}.vee_runs ORDER BY run_id"
    )
}

/// The runs of [`runs_sql`]'s answer.
#[doc(hidden)]
pub fn runs_from(table: &crate::analytics::Table) -> Result<Vec<VeeRun>, StorageError> {
    let mut runs: Vec<VeeRun> = Vec::with_capacity(table.rows.len());
    for row in 0..table.rows.len() {
        let p = |c: &str| table.get(row, c).unwrap_or_default().to_string();
        let n = |c: &str| parse::<u64>(table, row, c, "vee_runs");
        runs.push(VeeRun {
            run_id: parse(table, row, "run_id", "vee_runs")?,
            from_ms: parse(table, row, "from_ms", "vee_runs")?,
            to_ms: parse(table, row, "to_ms", "vee_runs")?,
            timezone: p("timezone"),
            meter: p("meter"),
            trigger: p("trigger"),
            parameters: p("parameters"),
            meters: n("meters")?,
            exceptions: n("exceptions")?,
            mended: n("mended")?,
            version_written: n("version_written")? != 0,
        });
    }
    // A retried insert may have stored a run twice.
    runs.dedup_by_key(|r| r.run_id);
    Ok(runs)
}

/// [`runs`] from ClickHouse.
pub async fn runs_clickhouse(config: &ClickHouseConfig) -> Result<Vec<VeeRun>, StorageError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let sql = runs_sql(&config.database, times);
    runs_from(&crate::analytics::Table::from_tsv(
        &crate::analytics::run_text(config, &sql).await?,
    ))
}

/// The query behind [`exceptions_clickhouse`] (read by [`exceptions_from`]).
#[doc(hidden)]
pub fn exceptions_sql(
    db: &str,
    times: crate::clickhouse::TimeColumns,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<String, StorageError> {
    let (from, bound) = time_sql(times, "from_ts");
    let (to, _) = time_sql(times, "to_ts");
    Ok(format!(
        "SELECT DISTINCT run_id, toString(day) AS day, meter_id, channel, rule, {from} AS from_ms, \
           {to} AS to_ms, detail, estimated, mended, method \
         FROM {db}.vee_exceptions \
         WHERE from_ts >= {reach} AND from_ts < {until} AND to_ts >= {since}{meter}",
        reach = bound(from_ms - REACH_MS),
        until = bound(to_ms),
        since = bound(from_ms),
        meter = meter_filter(meter)?,
    ))
}

/// The exceptions of [`exceptions_sql`]'s answer.
#[doc(hidden)]
pub fn exceptions_from(
    table: &crate::analytics::Table,
) -> Result<Vec<StoredException>, StorageError> {
    (0..table.rows.len())
        .map(|row| {
            let p = |c: &str| table.get(row, c).unwrap_or_default().to_string();
            Ok(StoredException {
                run_id: parse(table, row, "run_id", "vee_exceptions")?,
                day: parse(table, row, "day", "vee_exceptions")?,
                meter_id: p("meter_id"),
                channel: p("channel"),
                rule: p("rule"),
                from_ms: parse(table, row, "from_ms", "vee_exceptions")?,
                to_ms: parse(table, row, "to_ms", "vee_exceptions")?,
                detail: p("detail"),
                estimated: parse::<u8>(table, row, "estimated", "vee_exceptions")? != 0,
                mended: parse(table, row, "mended", "vee_exceptions")?,
                method: p("method"),
            })
        })
        .collect()
}

/// [`exceptions`] from ClickHouse.
pub async fn exceptions_clickhouse(
    config: &ClickHouseConfig,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> Result<Vec<StoredException>, StorageError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let sql = exceptions_sql(&config.database, times, from_ms, to_ms, meter)?;
    exceptions_from(&crate::analytics::Table::from_tsv(
        &crate::analytics::run_text(config, &sql).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, from: i64, to: i64, meter: &str) -> VeeRun {
        VeeRun {
            run_id: id,
            from_ms: from,
            to_ms: to,
            timezone: "UTC".into(),
            meter: meter.into(),
            trigger: "command".into(),
            parameters: "{}".into(),
            meters: 1,
            exceptions: 0,
            mended: 0,
            version_written: false,
        }
    }

    fn exception(run_id: i64, meter: &str, at: i64) -> StoredException {
        StoredException {
            run_id,
            day: chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .date_naive(),
            meter_id: meter.into(),
            channel: "1-0:1.8.0".into(),
            rule: "gap".into(),
            from_ms: at,
            to_ms: at + 3_600_000,
            detail: "4 reads missing".into(),
            estimated: true,
            mended: 4,
            method: "linear".into(),
        }
    }

    const D: i64 = DAY_MS;

    #[test]
    fn the_latest_run_that_judged_a_meter_and_day_speaks_for_it() {
        let runs = vec![
            run(10, 0, 2 * D, ""),
            // Day 1 judged again for M1 only: its findings there replace run 10's.
            run(20, D, 2 * D, "M1"),
        ];
        let found = vec![
            exception(10, "M1", 100),
            exception(10, "M1", D + 100),
            exception(10, "M2", D + 100),
            // A run with no row (cut short): skipped.
            exception(30, "M2", 200),
        ];
        let kept = standing(&runs, found);
        assert_eq!(
            kept,
            vec![exception(10, "M1", 100), exception(10, "M2", D + 100)]
        );
    }

    #[test]
    fn a_period_is_judged_when_runs_cover_it_without_a_hole() {
        let runs = vec![
            run(1, 0, D, ""),
            run(2, D, 2 * D, "M1"),
            run(3, 2 * D, 3 * D, ""),
        ];
        assert_eq!(first_unjudged(&runs, None, 0, 3 * D), Some(D));
        assert_eq!(first_unjudged(&runs, Some("M1"), 0, 3 * D), None);
        assert_eq!(first_unjudged(&runs, Some("M2"), 0, D), None);
        assert_eq!(first_unjudged(&runs, Some("M2"), 0, 4 * D), Some(D));
        assert_eq!(first_unjudged(&[], None, 5, 6), Some(5));
    }

    #[test]
    fn runs_and_exceptions_are_read_back_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_710_892_800_000; // 2024-03-20
        let first = run(day + 5 * D, day, day + 2 * D, "");
        let found = vec![
            exception(first.run_id, "M1", day + 100),
            exception(first.run_id, "M2", day + D + 100),
        ];
        let files = write_run(dir.path(), &first, &found).unwrap();
        assert_eq!(files.len(), 3, "two days of exceptions and the run");
        assert_eq!(runs(dir.path()).unwrap(), vec![first.clone()]);
        let got = exceptions(dir.path(), day + D, day + 2 * D, None).unwrap();
        assert_eq!(got, vec![found[1].clone()]);
        let got = exceptions(dir.path(), day, day + 2 * D, Some("M1")).unwrap();
        assert_eq!(got, vec![found[0].clone()]);
        // An exception that began before the period and reaches into it is found too.
        let got = exceptions(dir.path(), day + 1_000, day + 2_000, None).unwrap();
        assert_eq!(got, vec![found[0].clone()]);
        assert!(runs(tempfile::tempdir().unwrap().path())
            .unwrap()
            .is_empty());
    }
}
