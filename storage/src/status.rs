//! Device status reports (battery, signal, firmware, error flags) beside the readings: the
//! Parquet layout the sink seam writes them in, `{data_dir}/status/date=YYYY-MM-DD/*.parquet`
//! (by the UTC date of `ts`, the report's own time, as readings are by theirs; the same
//! columns as ClickHouse's `device_status`), and reading them back from that tree or from
//! ClickHouse, the same rows from both, for `meterflow query anomalies` and `devices`.
//!
//! `at` is when meterflow received a report; `ts` its own time: the time of the newest
//! reading of the message it came in (a bare status report, `meters/{id}/status`, carries
//! no time: there `ts` is `at`). Copies of one report (a replay after a crash, an insert
//! retried) share `(meter_id, at, lsn)` and count once. ClickHouse before 20.5 keeps times
//! in whole seconds, so `at` and `ts` read back to the whole second from every source (the
//! files keep milliseconds): both sources give the same rows. A `device_status` made by an
//! earlier version has no `ts` until `meterflow schema --apply` (or the writer's start) adds
//! it: until then `at` stands for it (with a warning).

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use arrow_array::builder::{
    Float32Builder, Int32Builder, StringBuilder, TimestampMillisecondBuilder, UInt32Builder,
    UInt64Builder, UInt8Builder,
};
use arrow_array::{
    Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt32Array, UInt64Array, UInt8Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::clickhouse::{ClickHouseConfig, StatusRow};
use crate::readings::parquet::{guarded, period_files};
use crate::StorageError;

/// The columns of a status file: those of ClickHouse's `device_status`.
pub fn status_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
            Arc::new(Schema::new(vec![
                Field::new("meter_id", DataType::Utf8, false),
                Field::new("at", ts.clone(), false),
                Field::new("battery_pct", DataType::UInt8, true),
                Field::new("rssi_dbm", DataType::Int32, true),
                Field::new("rsrp_dbm", DataType::Int32, true),
                Field::new("snr_db", DataType::Float32, true),
                Field::new("firmware", DataType::Utf8, true),
                Field::new("error_flags", DataType::UInt32, true),
                Field::new("source", DataType::Utf8, false),
                Field::new("lsn", DataType::UInt64, false),
                Field::new("ts", ts, false),
            ]))
        })
        .clone()
}

/// Status rows as a batch of [`status_schema`].
pub fn status_batch(rows: &[StatusRow]) -> Result<RecordBatch, StorageError> {
    let n = rows.len();
    let mut meter = StringBuilder::with_capacity(n, n * 16);
    let mut at = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut battery = UInt8Builder::with_capacity(n);
    let mut rssi = Int32Builder::with_capacity(n);
    let mut rsrp = Int32Builder::with_capacity(n);
    let mut snr = Float32Builder::with_capacity(n);
    let mut firmware = StringBuilder::with_capacity(n, n * 8);
    let mut flags = UInt32Builder::with_capacity(n);
    let mut source = StringBuilder::with_capacity(n, n * 4);
    let mut lsn = UInt64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        meter.append_value(&r.meter_id);
        at.append_value(r.at_ms);
        battery.append_option(r.battery_pct);
        rssi.append_option(r.rssi_dbm);
        rsrp.append_option(r.rsrp_dbm);
        snr.append_option(r.snr_db);
        firmware.append_option(r.firmware.as_deref());
        flags.append_option(r.error_flags);
        source.append_value(&r.source);
        lsn.append_value(r.lsn);
        ts.append_value(r.own_time_ms());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(meter.finish()),
        Arc::new(at.finish()),
        Arc::new(battery.finish()),
        Arc::new(rssi.finish()),
        Arc::new(rsrp.finish()),
        Arc::new(snr.finish()),
        Arc::new(firmware.finish()),
        Arc::new(flags.finish()),
        Arc::new(source.finish()),
        Arc::new(lsn.finish()),
        Arc::new(ts.finish()),
    ];
    Ok(RecordBatch::try_new(status_schema(), columns)?)
}

/// Which status reports to read: one meter or all, and a period of their own time `ts`
/// (`[from, to)`, Unix ms, to the second) or all, and in which view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusRequest {
    pub meter: Option<String>,
    pub period: Option<(i64, i64)>,
    pub view: StatusView,
}

/// What of the reports is delivered. Both sources reduce as they read (ClickHouse on the
/// server), so neither holds every report of the history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StatusView {
    /// Every report, each once.
    #[default]
    Reports,
    /// Only the reports with error flags set (`error_flags > 0`): what `query anomalies`
    /// needs.
    Flagged,
    /// One row per meter: each field from the newest report that carried it (newest by
    /// arrival: `(at to the second, lsn)`; an empty firmware is none), `at`, `ts`, `source`
    /// and `lsn` of the newest report: what `query devices` needs.
    Latest,
}

impl StatusRequest {
    fn validate(&self) -> Result<(), StorageError> {
        if let Some(m) = &self.meter {
            if !meterflow_proto::is_valid_meter_id(m) {
                return Err(StorageError::ReadRequest {
                    reason: format!("{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"),
                });
            }
        }
        Ok(())
    }

    fn wants(&self, meter: &str, ts_ms: i64, flags: Option<u32>) -> bool {
        self.meter.as_deref().is_none_or(|m| m == meter)
            && self
                .period
                .is_none_or(|(from, to)| from <= ts_ms && ts_ms < to)
            && (self.view != StatusView::Flagged || flags.is_some_and(|f| f > 0))
    }
}

/// A time to the whole second below: as ClickHouse before 20.5 keeps it, so that every
/// source gives the same rows.
fn whole_second(at_ms: i64) -> i64 {
    at_ms - at_ms.rem_euclid(1000)
}

/// Times to the second, sorted by (meter_id, at, lsn), one of each (copies of one report are
/// equal).
fn settle(mut rows: Vec<StatusRow>) -> Vec<StatusRow> {
    for r in &mut rows {
        r.at_ms = whole_second(r.at_ms);
        r.ts_ms = whole_second(r.ts_ms);
    }
    rows.sort_by(|a, b| (&a.meter_id, a.at_ms, a.lsn).cmp(&(&b.meter_id, b.at_ms, b.lsn)));
    rows.dedup_by(|a, b| (&a.meter_id, a.at_ms, a.lsn) == (&b.meter_id, b.at_ms, b.lsn));
    rows
}

/// The status reports of `req` in the Parquet tree under `data_dir`, ordered by (meter_id,
/// at, lsn), each once. No `status` folder (a tree written before status files, or with no
/// report yet) is no reports. Only complete files, and only the date folders of the period.
pub fn read_parquet(data_dir: &Path, req: &StatusRequest) -> Result<Vec<StatusRow>, StorageError> {
    req.validate()?;
    let mut rows = Vec::new();
    let mut latest = std::collections::BTreeMap::new();
    for path in period_files(&data_dir.join("status"), req.period)? {
        read_file(&path, req, &mut rows)?;
        if req.view == StatusView::Latest {
            for r in rows.drain(..) {
                fold_latest(&mut latest, r);
            }
        }
    }
    if req.view == StatusView::Latest {
        return Ok(latest.into_values().map(Latest::row).collect());
    }
    Ok(settle(rows))
}

/// The newest of each field of one meter, each with its report's `(at to the second, lsn)`.
struct Latest {
    newest: StatusRow,
    key: (i64, u64),
    battery_pct: Option<((i64, u64), u8)>,
    rssi_dbm: Option<((i64, u64), i32)>,
    rsrp_dbm: Option<((i64, u64), i32)>,
    snr_db: Option<((i64, u64), f32)>,
    firmware: Option<((i64, u64), String)>,
    error_flags: Option<((i64, u64), u32)>,
}

impl Latest {
    fn row(self) -> StatusRow {
        StatusRow {
            battery_pct: self.battery_pct.map(|f| f.1),
            rssi_dbm: self.rssi_dbm.map(|f| f.1),
            rsrp_dbm: self.rsrp_dbm.map(|f| f.1),
            snr_db: self.snr_db.map(|f| f.1),
            firmware: self.firmware.map(|f| f.1),
            error_flags: self.error_flags.map(|f| f.1),
            ..self.newest
        }
    }
}

/// Takes `value` at `key` where it is newer than what `field` holds (copies of one report
/// share the key and the values).
fn newer<T>(field: &mut Option<((i64, u64), T)>, key: (i64, u64), value: Option<T>) {
    if let Some(v) = value {
        if field.as_ref().is_none_or(|(k, _)| key >= *k) {
            *field = Some((key, v));
        }
    }
}

fn fold_latest(latest: &mut std::collections::BTreeMap<String, Latest>, mut r: StatusRow) {
    r.at_ms = whole_second(r.at_ms);
    r.ts_ms = whole_second(r.ts_ms);
    r.firmware = r.firmware.filter(|f| !f.is_empty());
    let key = (r.at_ms, r.lsn);
    let l = latest.entry(r.meter_id.clone()).or_insert_with(|| Latest {
        newest: r.clone(),
        key,
        battery_pct: None,
        rssi_dbm: None,
        rsrp_dbm: None,
        snr_db: None,
        firmware: None,
        error_flags: None,
    });
    newer(&mut l.battery_pct, key, r.battery_pct);
    newer(&mut l.rssi_dbm, key, r.rssi_dbm);
    newer(&mut l.rsrp_dbm, key, r.rsrp_dbm);
    newer(&mut l.snr_db, key, r.snr_db);
    newer(&mut l.firmware, key, r.firmware.clone());
    newer(&mut l.error_flags, key, r.error_flags);
    if key >= l.key {
        l.key = key;
        l.newest = r;
    }
}

fn read_file(
    path: &Path,
    req: &StatusRequest,
    out: &mut Vec<StatusRow>,
) -> Result<(), StorageError> {
    let read_error = |source| StorageError::ParquetRead {
        path: path.to_path_buf(),
        row_group: None,
        source,
    };
    let foreign = |reason: String| StorageError::ForeignParquet {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    guarded(path, None, || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(read_error)?
            .build()
            .map_err(read_error)?;
        for batch in reader {
            let batch = batch.map_err(|e| read_error(e.into()))?;
            fn column<'b, T: 'static>(
                batch: &'b RecordBatch,
                name: &str,
                nullable: bool,
                foreign: &dyn Fn(String) -> StorageError,
            ) -> Result<&'b T, StorageError> {
                let array = batch
                    .column_by_name(name)
                    .ok_or_else(|| foreign(format!("no column {name}")))?;
                if !nullable && array.null_count() > 0 {
                    return Err(foreign(format!("column {name} has nulls")));
                }
                array
                    .as_any()
                    .downcast_ref::<T>()
                    .ok_or_else(|| foreign(format!("column {name} is {}", array.data_type())))
            }
            let meter = column::<StringArray>(&batch, "meter_id", false, &foreign)?;
            let at = column::<TimestampMillisecondArray>(&batch, "at", false, &foreign)?;
            let battery = column::<UInt8Array>(&batch, "battery_pct", true, &foreign)?;
            let rssi = column::<Int32Array>(&batch, "rssi_dbm", true, &foreign)?;
            let rsrp = column::<Int32Array>(&batch, "rsrp_dbm", true, &foreign)?;
            let snr = column::<Float32Array>(&batch, "snr_db", true, &foreign)?;
            let firmware = column::<StringArray>(&batch, "firmware", true, &foreign)?;
            let flags = column::<UInt32Array>(&batch, "error_flags", true, &foreign)?;
            let source = column::<StringArray>(&batch, "source", false, &foreign)?;
            let lsn = column::<UInt64Array>(&batch, "lsn", false, &foreign)?;
            let ts = column::<TimestampMillisecondArray>(&batch, "ts", false, &foreign)?;
            for i in 0..batch.num_rows() {
                let error_flags = flags.is_valid(i).then(|| flags.value(i));
                if !req.wants(meter.value(i), whole_second(ts.value(i)), error_flags) {
                    continue;
                }
                let opt = |valid: bool| valid.then_some(());
                out.push(StatusRow {
                    meter_id: meter.value(i).to_string(),
                    at_ms: at.value(i),
                    ts_ms: ts.value(i),
                    battery_pct: opt(battery.is_valid(i)).map(|()| battery.value(i)),
                    rssi_dbm: opt(rssi.is_valid(i)).map(|()| rssi.value(i)),
                    rsrp_dbm: opt(rsrp.is_valid(i)).map(|()| rsrp.value(i)),
                    snr_db: opt(snr.is_valid(i)).map(|()| snr.value(i)),
                    // An empty firmware is none, as ClickHouse's answer reads.
                    firmware: opt(firmware.is_valid(i) && !firmware.value(i).is_empty())
                        .map(|()| firmware.value(i).to_string()),
                    error_flags,
                    source: source.value(i).to_string(),
                    lsn: lsn.value(i),
                });
            }
        }
        Ok(())
    })
}

/// The SQL of [`read_clickhouse`], filled as it is sent (TabSeparatedWithNames), for a
/// `device_status` of either kind (times `DateTime` or `DateTime64`), with the `ts` column
/// (`has_ts`) or without (an earlier version's table: `at` stands for it): times to the whole
/// second, as Unix milliseconds through Float64, filtered as the files are.
#[doc(hidden)]
pub fn clickhouse_sql(db: &str, req: &StatusRequest, has_ts: bool) -> Result<String, StorageError> {
    req.validate()?;
    let second = |column: &str| format!("toInt64(floor(toFloat64({column}))) * 1000");
    let at_ms = second("at");
    let ts_ms = second(if has_ts { "ts" } else { "at" });
    let mut filter = String::new();
    if let Some(m) = &req.meter {
        filter.push_str(&format!(" AND meter_id = '{m}'"));
    }
    if let Some((from, to)) = req.period {
        filter.push_str(&format!(" AND {ts_ms} >= {from} AND {ts_ms} < {to}"));
    }
    Ok(match req.view {
        StatusView::Reports | StatusView::Flagged => {
            if req.view == StatusView::Flagged {
                filter.push_str(" AND error_flags > 0");
            }
            format!(
                "SELECT meter_id, {at_ms} AS at_ms, {ts_ms} AS ts_ms, battery_pct, rssi_dbm, \
                 rsrp_dbm, snr_db, firmware, error_flags, source, lsn FROM {db}.device_status \
                 WHERE 1{filter} ORDER BY meter_id, at, lsn"
            )
        }
        StatusView::Latest => {
            // Each field from the newest report (by arrival, to the second, then lsn) that
            // carried it, aggregated on the server: one row per meter comes back.
            let key = format!("({at_ms}, lsn)");
            let fields = [
                "battery_pct",
                "rssi_dbm",
                "rsrp_dbm",
                "snr_db",
                "error_flags",
            ];
            // Inner names apart from the columns: ClickHouse puts an alias in for its name
            // anywhere in the query (`lsn` inside the key would become an aggregate).
            let mut inner: Vec<String> = fields
                .iter()
                .map(|c| format!("argMaxIf({c}, {key}, isNotNull({c})) AS f_{c}"))
                .collect();
            inner.push(format!(
                "argMaxIf(firmware, {key}, notEmpty(ifNull(firmware, ''))) AS f_firmware"
            ));
            let outer = fields
                .iter()
                .chain(&["firmware"])
                .map(|c| format!("f_{c} AS {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "SELECT meter_id, at_ms, ts_ms, {outer}, f_source AS source, f_lsn AS lsn \
                 FROM (SELECT meter_id, max({at_ms}) AS at_ms, argMax({ts_ms}, {key}) AS ts_ms, \
                 {inner}, argMax(source, {key}) AS f_source, argMax(lsn, {key}) AS f_lsn \
                 FROM {db}.device_status WHERE 1{filter} GROUP BY meter_id) ORDER BY meter_id",
                inner = inner.join(", ")
            )
        }
    })
}

/// The question whether `device_status` has the `ts` column (TabSeparatedWithNames, one
/// row: `has_ts`, 0 or 1).
#[doc(hidden)]
pub fn has_ts_sql(db: &str) -> String {
    format!(
        "SELECT count() AS has_ts FROM system.columns \
         WHERE database = '{db}' AND table = 'device_status' AND name = 'ts'"
    )
}

/// The rows of an answer to [`clickhouse_sql`] (TabSeparatedWithNames), settled as
/// [`read_parquet`]'s are.
#[doc(hidden)]
pub fn rows_from_tsv(text: &str) -> Result<Vec<StatusRow>, StorageError> {
    let table = crate::analytics::Table::from_tsv(text);
    let bad = |row: usize, column: &str| StorageError::ClickHouseAnswer {
        action: "reading device_status",
        offset: row as u64,
        reason: format!("column {column} of row {row} does not parse"),
    };
    let mut rows = Vec::with_capacity(table.rows.len());
    for i in 0..table.rows.len() {
        let text = |c: &str| table.get(i, c).unwrap_or("");
        fn opt<T: std::str::FromStr>(s: &str) -> Result<Option<T>, ()> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| ())
            }
        }
        let must = |c: &'static str| table.get(i, c).ok_or_else(|| bad(i, c));
        rows.push(StatusRow {
            meter_id: must("meter_id")?.to_string(),
            at_ms: must("at_ms")?.parse().map_err(|_| bad(i, "at_ms"))?,
            ts_ms: must("ts_ms")?.parse().map_err(|_| bad(i, "ts_ms"))?,
            battery_pct: opt(text("battery_pct")).map_err(|()| bad(i, "battery_pct"))?,
            rssi_dbm: opt(text("rssi_dbm")).map_err(|()| bad(i, "rssi_dbm"))?,
            rsrp_dbm: opt(text("rsrp_dbm")).map_err(|()| bad(i, "rsrp_dbm"))?,
            snr_db: opt(text("snr_db")).map_err(|()| bad(i, "snr_db"))?,
            firmware: table
                .get(i, "firmware")
                .filter(|f| !f.is_empty())
                .map(str::to_string),
            error_flags: opt(text("error_flags")).map_err(|()| bad(i, "error_flags"))?,
            source: text("source").to_string(),
            lsn: must("lsn")?.parse().map_err(|_| bad(i, "lsn"))?,
        });
    }
    Ok(settle(rows))
}

/// The status reports of `req` in ClickHouse's `device_status`, as [`read_parquet`] gives
/// them.
pub async fn read_clickhouse(
    config: &ClickHouseConfig,
    req: &StatusRequest,
) -> Result<Vec<StatusRow>, StorageError> {
    let db = &config.database;
    let answer = crate::analytics::run_text(config, &has_ts_sql(db)).await?;
    let has_ts = crate::analytics::Table::from_tsv(&answer).get(0, "has_ts") == Some("1");
    if !has_ts {
        tracing::warn!(database = %db, "device_status has no ts column (made by an earlier meterflow): status reports are taken at the time they were received; `meterflow schema --apply` adds it");
    }
    let sql = clickhouse_sql(db, req, has_ts)?;
    let text = crate::analytics::run_text(config, &sql).await?;
    rows_from_tsv(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn row(meter: &str, ts_ms: i64, lsn: u64, flags: Option<u32>) -> StatusRow {
        StatusRow {
            meter_id: meter.into(),
            at_ms: ts_ms + 3_600_000,
            ts_ms,
            battery_pct: Some(80),
            rssi_dbm: None,
            rsrp_dbm: Some(-100),
            snr_db: Some(2.5),
            firmware: Some("1.0".into()),
            error_flags: flags,
            source: "mqtt".into(),
            lsn,
        }
    }

    #[test]
    fn status_files_read_back_once_each_by_period_and_meter() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            crate::ParquetSink::open_status(dir.path(), crate::ParquetConfig::default(), "")
                .unwrap();
        let day = 19_783 * DAY_MS; // 2024-03-01
        let rows = vec![
            row("b", day + 5_000, 2, Some(4)),
            row("a", day + 1_000, 1, None),
            row("a", day + DAY_MS + 1, 3, Some(1)),
        ];
        sink.write(
            &status_batch(&rows).unwrap(),
            Some(1),
            std::time::Instant::now(),
        )
        .unwrap();
        // A replay writes the first report again.
        sink.write(
            &status_batch(&rows[..1]).unwrap(),
            Some(2),
            std::time::Instant::now(),
        )
        .unwrap();
        assert!(
            read_parquet(dir.path(), &StatusRequest::default())
                .unwrap()
                .is_empty(),
            "open files are not read"
        );
        assert_eq!(sink.close().unwrap().len(), 2, "one file per date");
        assert!(dir.path().join("status/date=2024-03-02").is_dir());
        let all = read_parquet(dir.path(), &StatusRequest::default()).unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.meter_id.as_str(), r.lsn))
                .collect::<Vec<_>>(),
            [("a", 1), ("a", 3), ("b", 2)]
        );
        assert_eq!(all[0], rows[1]);
        assert_eq!(all[2], rows[0]);
        let first_day = StatusRequest {
            meter: Some("a".into()),
            period: Some((day, day + DAY_MS)),
            ..Default::default()
        };
        assert_eq!(
            read_parquet(dir.path(), &first_day).unwrap(),
            vec![rows[1].clone()]
        );
        let none = tempfile::tempdir().unwrap();
        assert!(read_parquet(none.path(), &StatusRequest::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn clickhouse_answers_parse_with_nulls_as_none() {
        let text = "meter_id\tat_ms\tts_ms\tbattery_pct\trssi_dbm\trsrp_dbm\tsnr_db\tfirmware\terror_flags\tsource\tlsn\n\
                    a\t1000\t500\t\\N\t-70\t\\N\t\\N\t4.2\t5\tmqtt\t9\n\
                    a\t1000\t500\t\\N\t-70\t\\N\t\\N\t4.2\t5\tmqtt\t9\n";
        let rows = rows_from_tsv(text).unwrap();
        assert_eq!(rows.len(), 1, "copies count once");
        assert_eq!(
            (rows[0].battery_pct, rows[0].rssi_dbm, rows[0].error_flags),
            (None, Some(-70), Some(5))
        );
        assert!(rows_from_tsv("meter_id\tat_ms\tts_ms\tlsn\na\tx\t1\t1\n").is_err());
        let sql = clickhouse_sql(
            "mf",
            &StatusRequest {
                meter: Some("m-1".into()),
                period: Some((1_500, 4_000)),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        assert!(
            sql.contains("meter_id = 'm-1'")
                && sql.contains("toInt64(floor(toFloat64(ts))) * 1000 >= 1500 AND"),
            "{sql}"
        );
        let old = clickhouse_sql("mf", &StatusRequest::default(), false).unwrap();
        assert!(!old.contains("(ts)"), "{old}");
        assert!(clickhouse_sql(
            "mf",
            &StatusRequest {
                meter: Some("x' OR 1=1".into()),
                period: None,
                ..Default::default()
            },
            true,
        )
        .is_err());
    }
}
