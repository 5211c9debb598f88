//! Meter events (tamper, alarms, power failures, refusals at the edge) beside the readings:
//! the rows ([`EventRow`]), their Parquet layout `{data_dir}/events/date=YYYY-MM-DD/*.parquet`
//! (by the UTC date of `ts`, with the file rules of the readings' and status files), the
//! ClickHouse table `events`, and reading them back from either, the same rows from both,
//! for `meterflow query events`, `query suspects` and the device page.
//!
//! An event is identified by `(meter_id, ts to the second, kind, code)`: a DSMR power-failure
//! log repeats its entries in every telegram, a status report its bits, a replay after a
//! crash its record; each is one event (ClickHouse's ReplacingMergeTree keeps one, the reader
//! here keeps one). Times read back to the whole second from both sources, as ClickHouse
//! before 20.5 keeps them.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::clickhouse::ClickHouseConfig;
use crate::readings::parquet::period_files;
use crate::whole_file::{column, read_batches};
use crate::StorageError;

/// One event of one meter.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct EventRow {
    pub meter_id: String,
    /// When it happened (or was reported), Unix ms.
    pub ts_ms: i64,
    /// One of the normalised kinds (`meterflow_decoders::events::EventKind`).
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The way it came in (`mqtt`, `coap`, `dlms`, `bridge`, `import`).
    pub source: String,
    /// The source's own code (`bit 4`, `0-0:97.98.0 bit 13`, `1-0:99.97.0 240`, the
    /// impersonating identity of a forged publish).
    pub code: String,
    pub detail: String,
    /// What it was made of, as text (the flags as hex, the topic of a forged publish).
    pub raw: String,
}

/// The columns of an events file: those of ClickHouse's `events`.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
            let text = |name: &str| Field::new(name, DataType::Utf8, false);
            Arc::new(Schema::new(vec![
                text("meter_id"),
                Field::new("ts", ts, false),
                text("kind"),
                text("severity"),
                text("source"),
                text("code"),
                text("detail"),
                text("raw"),
            ]))
        })
        .clone()
}

/// Event rows as a batch of [`events_schema`].
pub fn events_batch(rows: &[EventRow]) -> Result<RecordBatch, StorageError> {
    let n = rows.len();
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut texts: [StringBuilder; 7] = std::array::from_fn(|_| StringBuilder::new());
    for r in rows {
        ts.append_value(r.ts_ms);
        for (builder, value) in texts.iter_mut().zip(r.texts()) {
            builder.append_value(value);
        }
    }
    let [meter, kind, severity, source, code, detail, raw] = texts.map(|mut b| b.finish());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(meter),
        Arc::new(ts.finish()),
        Arc::new(kind),
        Arc::new(severity),
        Arc::new(source),
        Arc::new(code),
        Arc::new(detail),
        Arc::new(raw),
    ];
    Ok(RecordBatch::try_new(events_schema(), columns)?)
}

impl EventRow {
    /// The text columns in the order of [`TEXT_COLUMNS`].
    fn texts(&self) -> [&str; 7] {
        [
            &self.meter_id,
            &self.kind,
            &self.severity,
            &self.source,
            &self.code,
            &self.detail,
            &self.raw,
        ]
    }

    fn key(&self) -> (&str, i64, &str, &str) {
        (&self.meter_id, self.ts_ms, &self.kind, &self.code)
    }
}

/// The text columns, in [`EventRow::texts`] order.
const TEXT_COLUMNS: [&str; 7] = [
    "meter_id", "kind", "severity", "source", "code", "detail", "raw",
];

/// Which events to read: a period of `ts` (`[from, to)`, Unix ms), one meter or all, some
/// kinds or all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventRequest {
    pub period: Option<(i64, i64)>,
    pub meter: Option<String>,
    pub kinds: Vec<String>,
}

impl EventRequest {
    fn validate(&self) -> Result<(), StorageError> {
        if let Some(m) = &self.meter {
            if !meterflow_proto::is_valid_meter_id(m) {
                return Err(StorageError::ReadRequest {
                    reason: format!("{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"),
                });
            }
        }
        for k in &self.kinds {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return Err(StorageError::ReadRequest {
                    reason: format!("{k:?} is not an event kind (lower-case letters and _)"),
                });
            }
        }
        Ok(())
    }

    fn wants(&self, r: &EventRow) -> bool {
        self.meter.as_deref().is_none_or(|m| m == r.meter_id)
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self
                .period
                .is_none_or(|(from, to)| r.ts_ms >= from && r.ts_ms < to)
    }
}

/// Times to the second, ordered by (ts, meter_id, kind, code), each event once.
fn settle(mut rows: Vec<EventRow>) -> Vec<EventRow> {
    for r in &mut rows {
        r.ts_ms -= r.ts_ms.rem_euclid(1000);
    }
    rows.sort_by(|a, b| {
        (a.ts_ms, &a.meter_id, &a.kind, &a.code).cmp(&(b.ts_ms, &b.meter_id, &b.kind, &b.code))
    });
    rows.dedup_by(|a, b| a.key() == b.key());
    rows
}

/// The events of `req` in the Parquet tree under `data_dir`: complete files of the date
/// folders of the period. No `events` folder is no events.
pub fn read_parquet(data_dir: &Path, req: &EventRequest) -> Result<Vec<EventRow>, StorageError> {
    req.validate()?;
    let mut rows = Vec::new();
    for path in period_files(&data_dir.join("events"), req.period)? {
        {
            for batch in read_batches(&path)? {
                let ts = column::<TimestampMillisecondArray>(&batch, "ts", &path)?;
                let texts = TEXT_COLUMNS
                    .iter()
                    .map(|name| column::<StringArray>(&batch, name, &path))
                    .collect::<Result<Vec<_>, _>>()?;
                for i in 0..batch.num_rows() {
                    let text = |c: usize| texts[c].value(i).to_string();
                    let mut row = EventRow {
                        meter_id: text(0),
                        ts_ms: ts.value(i),
                        kind: text(1),
                        severity: text(2),
                        source: text(3),
                        code: text(4),
                        detail: text(5),
                        raw: text(6),
                    };
                    row.ts_ms -= row.ts_ms.rem_euclid(1000);
                    if req.wants(&row) {
                        rows.push(row);
                    }
                }
            }
        }
    }
    Ok(settle(rows))
}

/// The SQL of [`read_clickhouse`] (TabSeparatedWithNames), for an `events` table of either
/// time type: `ts` to the whole second as Unix ms, filtered as the files are.
#[doc(hidden)]
pub fn clickhouse_sql(db: &str, req: &EventRequest) -> Result<String, StorageError> {
    req.validate()?;
    let ts_ms = "toInt64(floor(toFloat64(ts))) * 1000";
    let mut filter = String::new();
    if let Some(m) = &req.meter {
        filter.push_str(&format!(" AND meter_id = '{m}'"));
    }
    if let Some((from, to)) = req.period {
        // `ts` against whole seconds of its own kind first (the partitions and the sort key
        // prune), then to the second exactly as the files are read.
        // (Clamped to what a DateTime holds: 18.16 wraps a value outside it.)
        let second = |ms: i64| ms.div_euclid(1000).clamp(0, i64::from(u32::MAX));
        let (from_s, to_s) = (second(from), second(to.saturating_add(1000)));
        filter.push_str(&format!(
            " AND ts >= toDateTime({from_s}) AND ts < toDateTime({to_s}) AND {ts_ms} >= {from} AND {ts_ms} < {to}"
        ));
    }
    if !req.kinds.is_empty() {
        let kinds: Vec<String> = req.kinds.iter().map(|k| format!("'{k}'")).collect();
        filter.push_str(&format!(" AND kind IN ({})", kinds.join(", ")));
    }
    Ok(format!(
        "SELECT meter_id, {ts_ms} AS ts_ms, kind, severity, source, code, detail, raw \
         FROM {db}.events WHERE 1{filter} ORDER BY ts_ms, meter_id, kind, code"
    ))
}

/// The rows of an answer to [`clickhouse_sql`], settled as [`read_parquet`]'s are.
#[doc(hidden)]
pub fn rows_from_tsv(text: &str) -> Result<Vec<EventRow>, StorageError> {
    let table = crate::analytics::Table::from_tsv(text);
    let mut rows = Vec::with_capacity(table.rows.len());
    for i in 0..table.rows.len() {
        let text = |c: &str| table.get(i, c).unwrap_or("").to_string();
        let ts = table.get(i, "ts_ms").and_then(|t| t.parse().ok());
        let ts_ms = ts.ok_or_else(|| StorageError::ClickHouseAnswer {
            action: "reading events",
            offset: i as u64,
            reason: format!("column ts_ms of row {i} does not parse"),
        })?;
        rows.push(EventRow {
            meter_id: text("meter_id"),
            ts_ms,
            kind: text("kind"),
            severity: text("severity"),
            source: text("source"),
            code: text("code"),
            detail: text("detail"),
            raw: text("raw"),
        });
    }
    Ok(settle(rows))
}

/// The events of `req` in ClickHouse's `events`, as [`read_parquet`] gives them.
pub async fn read_clickhouse(
    config: &ClickHouseConfig,
    req: &EventRequest,
) -> Result<Vec<EventRow>, StorageError> {
    let sql = clickhouse_sql(&config.database, req)?;
    let text = crate::analytics::run_text(config, &sql).await?;
    rows_from_tsv(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    fn row(meter: &str, ts_ms: i64, kind: &str, code: &str) -> EventRow {
        EventRow {
            meter_id: meter.into(),
            ts_ms,
            kind: kind.into(),
            severity: "critical".into(),
            source: "mqtt".into(),
            code: code.into(),
            detail: "d\twith a tab".into(),
            raw: String::new(),
        }
    }

    #[test]
    fn files_hold_events_once_by_date_and_filter_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink =
            crate::ParquetSink::open_events(dir.path(), crate::ParquetConfig::default(), "")
                .unwrap();
        let day = 1_709_337_600_000; // 2024-03-02
        let rows = [
            row("E1", day + 1_500, "cover_open", "bit 2"),
            // The same event again (a repeated report), a millisecond apart: one.
            row("E1", day + 1_900, "cover_open", "bit 2"),
            row("E2", day + DAY_MS + 5, "forged_publish", "GW"),
        ];
        sink.write(
            &events_batch(&rows).unwrap(),
            None,
            std::time::Instant::now(),
        )
        .unwrap();
        sink.close().unwrap();
        assert!(dir.path().join("events/date=2024-03-02").is_dir());
        let all = read_parquet(dir.path(), &EventRequest::default()).unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].ts_ms, day + 1_000);
        assert_eq!(all[0].detail, "d\twith a tab");
        let forged = read_parquet(
            dir.path(),
            &EventRequest {
                kinds: vec!["forged_publish".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(forged.len(), 1);
        assert_eq!(forged[0].meter_id, "E2");
        let first_day = read_parquet(
            dir.path(),
            &EventRequest {
                period: Some((day, day + DAY_MS)),
                meter: Some("E1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(first_day.len(), 1);
        assert!(read_parquet(
            dir.path(),
            &EventRequest {
                kinds: vec!["x'; DROP".into()],
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn the_clickhouse_answer_settles_as_the_files_do() {
        let tsv = "meter_id\tts_ms\tkind\tseverity\tsource\tcode\tdetail\traw\n\
                   E1\t2000\tcover_open\tcritical\tmqtt\tbit 2\t\t0x4\n\
                   E1\t2000\tcover_open\tcritical\tmqtt\tbit 2\t\t0x4\n";
        let rows = rows_from_tsv(tsv).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].raw, "0x4");
        let sql = clickhouse_sql(
            "mf",
            &EventRequest {
                kinds: vec!["cover_open".into(), "leak".into()],
                meter: Some("E1".into()),
                period: Some((0, 1000)),
            },
        )
        .unwrap();
        assert!(sql.contains("kind IN ('cover_open', 'leak')"), "{sql}");
        assert!(sql.contains("meter_id = 'E1'"), "{sql}");
    }
}
