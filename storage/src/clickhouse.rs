//! The ClickHouse sink: the schema (version-aware DDL), the columnar insert of an Arrow
//! batch as RowBinary, error classification, and a writer thread with retries.
//!
//! Schema: database `meterflow` (configurable), `readings` a ReplacingMergeTree ordered by
//! `(meter_id, channel, ts)` and partitioned by month, so a reading delivered twice is stored
//! once after merges (queries dedupe with `FINAL` or `argMax` before that); hourly and daily
//! rollups per meter and channel as materialized views; `dead_letters`. On a server from 20.5
//! on it uses `LowCardinality`, `DateTime64(3)`, codecs and an optional TTL; on older ones
//! (Debian's 18.16) plain `String` and `DateTime` (second precision).
//!
//! Inserts are RowBinary built column by column from the Arrow batch (no text format on the
//! hot path), through the `clickhouse` crate's formatted insert. Network errors, timeouts and
//! server errors are retried with capped exponential backoff and jitter; errors that say the
//! data is at fault (`Code: 117`, `53`, `27`, `33`, `6`, `70`) are not: the batch is handed
//! back so its rows can be kept as dead letters, and the queue goes on.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt16Type};
use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP URL of the server, e.g. `http://127.0.0.1:8123`; empty: no ClickHouse sink.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Drop readings older than this many days (servers from 20.5 on); 0 keeps them forever.
    pub ttl_days: u32,
    /// First retry delay after a failed insert; doubled per attempt up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Batches waiting for the writer at most; when full, the pipeline waits (and the WAL
    /// holds what arrives meanwhile).
    pub queue_batches: usize,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "meterflow".into(),
            user: "default".into(),
            password: String::new(),
            ttl_days: 0,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            queue_batches: 4,
        }
    }
}

impl ClickHouseConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(crate) fn client(&self) -> clickhouse::Client {
        // No compression: 18.16 answers compressed reads with an empty body.
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_validation(false)
    }
}

/// `major.minor` of the server, which decides the column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        Some(ServerVersion {
            major: parts.next()?.parse().ok()?,
            minor: parts.next()?.parse().ok()?,
        })
    }

    /// LowCardinality, DateTime64(3), codecs and TTL are all there from 20.3 on, and
    /// `toUnixTimestamp64Milli` (which reading DateTime64 back needs) from 20.5.
    pub fn is_modern(self) -> bool {
        self >= ServerVersion {
            major: 20,
            minor: 5,
        }
    }

    fn time_type(self) -> &'static str {
        if self.is_modern() {
            "DateTime64(3, 'UTC')"
        } else {
            "DateTime"
        }
    }
}

/// The DDL of every object, in the order to create them; each statement is idempotent.
pub fn schema_ddl(db: &str, version: ServerVersion, ttl_days: u32) -> Vec<String> {
    let time = version.time_type();
    let modern = version.is_modern();
    let lc = |t: &str| {
        if modern {
            format!("LowCardinality({t})")
        } else {
            t.to_string()
        }
    };
    let codec = |c: &str| {
        if modern {
            format!(" CODEC({c})")
        } else {
            String::new()
        }
    };
    let ttl = if modern && ttl_days > 0 {
        format!("\nTTL toDateTime(ts) + INTERVAL {ttl_days} DAY")
    } else {
        String::new()
    };
    let mut ddl = vec![format!("CREATE DATABASE IF NOT EXISTS {db}")];
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.readings (
    meter_id String{meter_codec},
    channel {channel},
    ts {time}{ts_codec},
    value Float64{value_codec},
    unit {unit},
    quality UInt16,
    received_at {time}{ts_codec},
    source {source},
    format {format}
) ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMM(ts)
ORDER BY (meter_id, channel, ts){ttl}",
        meter_codec = codec("ZSTD(1)"),
        channel = lc("String"),
        ts_codec = codec("DoubleDelta, ZSTD(1)"),
        value_codec = codec("Gorilla, ZSTD(1)"),
        unit = lc("String"),
        source = lc("String"),
        format = lc("String"),
    ));
    for (name, bucket, column) in [
        ("readings_hourly", "toStartOfHour(ts)", "hour"),
        ("readings_daily", "toDate(ts)", "day"),
    ] {
        ddl.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}
ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM({column})
ORDER BY (meter_id, channel, {column})
AS SELECT
    meter_id,
    channel,
    {bucket} AS {column},
    minState(value) AS min_value,
    maxState(value) AS max_value,
    argMaxState(value, ts) AS last_value,
    argMinState(value, ts) AS first_value,
    countState() AS samples
FROM {db}.readings
GROUP BY meter_id, channel, {column}"
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.device_status (
    meter_id String,
    at {time},
    battery_pct Nullable(UInt8),
    rssi_dbm Nullable(Int32),
    rsrp_dbm Nullable(Int32),
    snr_db Nullable(Float32),
    firmware Nullable(String),
    error_flags Nullable(UInt32),
    source String,
    lsn UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(at)
ORDER BY (meter_id, at, lsn)"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.dead_letters (
    received_at {time},
    source String,
    topic String,
    meter_id String,
    format String,
    kind String,
    reason String,
    payload String,
    lsn UInt64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(received_at)
ORDER BY (received_at, meter_id, lsn)"
    ));
    ddl
}

/// A failed ClickHouse operation, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("clickhouse {action}: {source}")]
pub struct ClickHouseError {
    pub action: &'static str,
    #[source]
    pub source: clickhouse::error::Error,
}

/// Server error codes that mean the data itself is wrong: retrying sends the same bytes.
const DATA_ERROR_CODES: [u32; 6] = [117, 53, 27, 33, 6, 70];

impl ClickHouseError {
    /// The server's error code (`Code: 117.` on current servers, `Code: 117,` on 18.16).
    pub fn code(&self) -> Option<u32> {
        let clickhouse::error::Error::BadResponse(text) = &self.source else {
            return None;
        };
        // With an empty body the crate reports the bare X-ClickHouse-Exception-Code.
        if let Ok(code) = text.trim().parse() {
            return Some(code);
        }
        let rest = &text[text.find("Code: ")? + 6..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    pub fn is_retryable(&self) -> bool {
        !self.code().is_some_and(|c| DATA_ERROR_CODES.contains(&c))
    }
}

/// Reads the server version.
pub async fn server_version(config: &ClickHouseConfig) -> Result<ServerVersion, ClickHouseError> {
    let text = config
        .client()
        .query("SELECT version()")
        .fetch_one::<String>()
        .await
        .map_err(|source| ClickHouseError {
            action: "reading the server version",
            source,
        })?;
    ServerVersion::parse(&text).ok_or_else(|| ClickHouseError {
        action: "reading the server version",
        source: clickhouse::error::Error::Custom(format!("cannot parse version {text:?}")),
    })
}

/// Creates the database, tables and rollups that are missing; returns the server version.
pub async fn apply_schema(config: &ClickHouseConfig) -> Result<ServerVersion, ClickHouseError> {
    let version = server_version(config).await?;
    let client = config.client();
    for statement in schema_ddl(&config.database, version, config.ttl_days) {
        client
            .query(&statement)
            .execute()
            .await
            .map_err(|source| ClickHouseError {
                action: "applying the schema",
                source,
            })?;
    }
    Ok(version)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A RowBinary String: LEB128 length, then the bytes (any bytes: ClickHouse does not check).
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = bytes.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// How the `readings` table stores times: decided by the table, not the server version (a
/// table made on 18.16 keeps `DateTime` after the server is upgraded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeColumns {
    /// `DateTime64(3)`: Int64 milliseconds.
    Millis,
    /// `DateTime`: UInt32 seconds.
    Seconds,
}

/// Reads the type of `readings.ts` from `system.columns`.
pub async fn time_columns(config: &ClickHouseConfig) -> Result<TimeColumns, ClickHouseError> {
    let db = &config.database;
    let kind = config
        .client()
        .query(&format!(
            "SELECT type FROM system.columns WHERE database = '{db}' AND table = 'readings' AND name = 'ts'"
        ))
        .fetch_one::<String>()
        .await
        .map_err(|source| ClickHouseError {
            action: "reading the type of readings.ts",
            source,
        })?;
    Ok(if kind.starts_with("DateTime64") {
        TimeColumns::Millis
    } else {
        TimeColumns::Seconds
    })
}

/// How the tables the writer inserts into are laid out, read from the server (tables made by
/// an earlier meterflow keep working).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    pub times: TimeColumns,
    /// `device_status` has the `lsn` key column (made by this version): a repeated insert is
    /// harmless. Without it (an earlier version's MergeTree) a retry may leave a duplicate.
    pub status_lsn: bool,
    /// The same for `dead_letters`.
    pub dead_letter_lsn: bool,
}

/// Reads the [`TableLayout`] from `system.columns`.
pub async fn table_layout(config: &ClickHouseConfig) -> Result<TableLayout, ClickHouseError> {
    let times = time_columns(config).await?;
    let db = &config.database;
    let tables = config
        .client()
        .query(&format!(
            "SELECT table FROM system.columns WHERE database = '{db}' AND name = 'lsn' AND table IN ('device_status', 'dead_letters')"
        ))
        .fetch_all::<String>()
        .await
        .map_err(|source| ClickHouseError {
            action: "reading the columns of device_status and dead_letters",
            source,
        })?;
    let layout = TableLayout {
        times,
        status_lsn: tables.iter().any(|t| t == "device_status"),
        dead_letter_lsn: tables.iter().any(|t| t == "dead_letters"),
    };
    if !layout.status_lsn || !layout.dead_letter_lsn {
        tracing::warn!(
            database = %db,
            "device_status or dead_letters was made by an earlier meterflow (no lsn column): an insert retried after a timeout may be stored twice there. To make retries harmless, rename the table, run `meterflow schema --apply` and copy the rows over (see docs/ARCHITECTURE.md)"
        );
    }
    Ok(layout)
}

/// Encodes a batch of the canonical schema as RowBinary for the `readings` columns.
pub fn encode_rowbinary(batch: &RecordBatch, times: TimeColumns) -> Vec<u8> {
    let s = |i: usize| batch.column(i).as_string::<i32>();
    let (meter, channel, unit, source, format) = (s(0), s(1), s(4), s(7), s(8));
    let ts = batch.column(2).as_primitive::<TimestampMillisecondType>();
    let value = batch.column(3).as_primitive::<Float64Type>();
    let quality = batch.column(5).as_primitive::<UInt16Type>();
    let received = batch.column(6).as_primitive::<TimestampMillisecondType>();
    let put_time = |out: &mut Vec<u8>, ms: i64| {
        if times == TimeColumns::Millis {
            out.extend_from_slice(&ms.to_le_bytes());
        } else {
            let secs = u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
            out.extend_from_slice(&secs.to_le_bytes());
        }
    };
    let mut out = Vec::with_capacity(batch.num_rows() * 64);
    for i in 0..batch.num_rows() {
        put_str(&mut out, meter.value(i));
        put_str(&mut out, channel.value(i));
        put_time(&mut out, ts.value(i));
        out.extend_from_slice(&value.value(i).to_le_bytes());
        put_str(&mut out, unit.value(i));
        out.extend_from_slice(&quality.value(i).to_le_bytes());
        put_time(&mut out, received.value(i));
        put_str(&mut out, source.value(i));
        put_str(&mut out, format.value(i));
    }
    out
}

/// Inserts one batch (what the writer thread does for each, without its retries).
pub async fn insert_batch(
    config: &ClickHouseConfig,
    times: TimeColumns,
    batch: &RecordBatch,
) -> Result<(), ClickHouseError> {
    insert_readings(
        &config.client(),
        &config.database,
        encode_rowbinary(batch, times),
    )
    .await
}

async fn insert_readings(
    client: &clickhouse::Client,
    db: &str,
    body: Vec<u8>,
) -> Result<(), ClickHouseError> {
    let sql = format!(
        "INSERT INTO {db}.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) FORMAT RowBinary"
    );
    // A stalled server must not hold the writer (and so shutdown) forever.
    let mut insert = client.insert_formatted_with(sql).with_timeouts(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(120)),
    );
    let err = |source| ClickHouseError {
        action: "inserting readings",
        source,
    };
    insert.send(body.into()).await.map_err(err)?;
    insert.end().await.map_err(err)
}

/// One device status report (bare, or inside a report), for the `device_status` table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatusRow {
    pub meter_id: String,
    /// When meterflow accepted it, Unix ms.
    pub at_ms: i64,
    pub battery_pct: Option<u8>,
    pub rssi_dbm: Option<i32>,
    pub rsrp_dbm: Option<i32>,
    pub snr_db: Option<f32>,
    pub firmware: Option<String>,
    pub error_flags: Option<u32>,
    pub source: String,
    /// The WAL position of the message it came from (a unique stand-in when it has none):
    /// part of the table's key, so an insert repeated by a retry is one row after merges,
    /// while two reports of one meter in the same second stay two.
    pub lsn: u64,
}

/// A payload that did not decode, for the `dead_letters` table (the same as the dead-letter
/// files hold).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeadLetterRow {
    pub received_at_ms: i64,
    pub source: String,
    pub topic: String,
    pub meter_id: String,
    pub format: String,
    pub kind: String,
    pub reason: String,
    /// The raw payload (a ClickHouse String holds any bytes).
    pub payload: Vec<u8>,
    /// The WAL position of the message, as in [`StatusRow::lsn`].
    pub lsn: u64,
}

/// What goes to ClickHouse beside a batch of readings.
#[derive(Debug, Clone, Default)]
pub struct SideRows {
    pub statuses: Vec<StatusRow>,
    pub dead_letters: Vec<DeadLetterRow>,
    /// The oldest WAL record with a row here (what the checkpoint may not pass before they
    /// are inserted).
    oldest_lsn: Option<u64>,
}

impl SideRows {
    pub fn is_empty(&self) -> bool {
        self.statuses.is_empty() && self.dead_letters.is_empty()
    }

    /// Notes that a row of WAL record `lsn` was added (0: not in the WAL, holds nothing).
    pub fn note_lsn(&mut self, lsn: u64) {
        if lsn > 0 {
            self.oldest_lsn = Some(self.oldest_lsn.map_or(lsn, |o| o.min(lsn)));
        }
    }

    /// The oldest WAL record with a row here.
    pub fn oldest_lsn(&self) -> Option<u64> {
        self.oldest_lsn
    }

    /// Rows held, and payload bytes (to flush before they grow large).
    pub fn size(&self) -> (usize, usize) {
        let bytes = self
            .dead_letters
            .iter()
            .map(|d| d.payload.len() + d.reason.len())
            .sum();
        (self.statuses.len() + self.dead_letters.len(), bytes)
    }
}

fn put_time(out: &mut Vec<u8>, ms: i64, times: TimeColumns) {
    match times {
        TimeColumns::Millis => out.extend_from_slice(&ms.to_le_bytes()),
        TimeColumns::Seconds => {
            let secs = u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
            out.extend_from_slice(&secs.to_le_bytes());
        }
    }
}

/// Encodes dead letters as RowBinary for `dead_letters` (with `lsn` when `with_lsn`).
pub fn encode_dead_letter_rowbinary(
    rows: &[DeadLetterRow],
    times: TimeColumns,
    with_lsn: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        put_time(&mut out, r.received_at_ms, times);
        for text in [
            &r.source,
            &r.topic,
            &r.meter_id,
            &r.format,
            &r.kind,
            &r.reason,
        ] {
            put_str(&mut out, text);
        }
        put_bytes(&mut out, &r.payload);
        if with_lsn {
            out.extend_from_slice(&r.lsn.to_le_bytes());
        }
    }
    out
}

/// Encodes status rows as RowBinary for `device_status` (Nullable: a null flag byte, then
/// the value when present; `lsn` last when `with_lsn`).
pub fn encode_status_rowbinary(rows: &[StatusRow], times: TimeColumns, with_lsn: bool) -> Vec<u8> {
    fn opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
        match v {
            Some(v) => {
                out.push(0);
                put(out, v);
            }
            None => out.push(1),
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 48);
    for r in rows {
        put_str(&mut out, &r.meter_id);
        put_time(&mut out, r.at_ms, times);
        opt(&mut out, r.battery_pct, |o, v| o.push(v));
        opt(&mut out, r.rssi_dbm, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.rsrp_dbm, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.snr_db, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        opt(&mut out, r.firmware.as_deref(), put_str);
        opt(&mut out, r.error_flags, |o, v| {
            o.extend_from_slice(&v.to_le_bytes())
        });
        put_str(&mut out, &r.source);
        if with_lsn {
            out.extend_from_slice(&r.lsn.to_le_bytes());
        }
    }
    out
}

async fn insert_dead_letters(
    client: &clickhouse::Client,
    db: &str,
    rows: &[DeadLetterRow],
    layout: TableLayout,
) -> Result<(), ClickHouseError> {
    let lsn = if layout.dead_letter_lsn { ", lsn" } else { "" };
    insert_rowbinary(
        client,
        format!("INSERT INTO {db}.dead_letters (received_at, source, topic, meter_id, format, kind, reason, payload{lsn}) FORMAT RowBinary"),
        encode_dead_letter_rowbinary(rows, layout.times, layout.dead_letter_lsn),
        "inserting dead letters",
    )
    .await
}

async fn insert_statuses(
    client: &clickhouse::Client,
    db: &str,
    rows: &[StatusRow],
    layout: TableLayout,
) -> Result<(), ClickHouseError> {
    let lsn = if layout.status_lsn { ", lsn" } else { "" };
    insert_rowbinary(
        client,
        format!("INSERT INTO {db}.device_status (meter_id, at, battery_pct, rssi_dbm, rsrp_dbm, snr_db, firmware, error_flags, source{lsn}) FORMAT RowBinary"),
        encode_status_rowbinary(rows, layout.times, layout.status_lsn),
        "inserting device status",
    )
    .await
}

async fn insert_rowbinary(
    client: &clickhouse::Client,
    sql: String,
    body: Vec<u8>,
    action: &'static str,
) -> Result<(), ClickHouseError> {
    let mut insert = client.insert_formatted_with(sql).with_timeouts(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(120)),
    );
    let err = |source| ClickHouseError { action, source };
    insert.send(body.into()).await.map_err(err)?;
    insert.end().await.map_err(err)
}

/// A batch for the writer, and the WAL LSN through which the pipeline had handled every
/// record when it made the batch.
struct Job {
    batch: RecordBatch,
    side: SideRows,
    through_lsn: u64,
}

/// A batch ClickHouse refused for its data, handed back to be kept as dead letters.
pub struct RejectedBatch {
    pub batch: RecordBatch,
    pub reason: String,
}

/// The writer thread: inserts batches in order, retrying what a retry can fix.
pub struct ClickHouseWriter {
    jobs: Option<SyncSender<Job>>,
    /// Set at shutdown (shared with the rest of serve): stop waiting and retrying.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// The writer thread is gone: nothing more will be confirmed.
    dead: std::sync::atomic::AtomicBool,
    rejected: Receiver<RejectedBatch>,
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    /// Unix ms since when inserts fail and are retried; 0 while they succeed.
    failing_since_ms: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClickHouseWriter {
    /// Starts the writer; it applies the schema (retrying while the server is away) before
    /// the first insert, so start-up does not wait for ClickHouse.
    /// `closing` is the process's shutdown flag.
    pub fn start(
        config: ClickHouseConfig,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<ClickHouseWriter, StorageError> {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(config.queue_batches.max(1));
        let (rejected_tx, rejected_rx) = std::sync::mpsc::channel();
        let confirmed = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let failing_since_ms = Arc::new(AtomicI64::new(0));
        let (c, p, stop, f) = (
            confirmed.clone(),
            pending.clone(),
            closing.clone(),
            failing_since_ms.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("clickhouse-sink".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the ClickHouse writer's runtime");
                        return;
                    }
                };
                runtime.block_on(run_writer(config, jobs_rx, rejected_tx, c, p, stop, f));
            })
            .map_err(|e| {
                StorageError::io("spawning the ClickHouse writer", "clickhouse-sink", e)
            })?;
        Ok(ClickHouseWriter {
            jobs: Some(jobs_tx),
            closing,
            dead: std::sync::atomic::AtomicBool::new(false),
            rejected: rejected_rx,
            confirmed,
            pending,
            failing_since_ms,
            thread: Some(thread),
        })
    }

    /// Shared with `/ready`: Unix ms since when inserts fail and are retried, 0 while they
    /// succeed.
    pub fn failing_since(&self) -> Arc<AtomicI64> {
        self.failing_since_ms.clone()
    }

    /// Queues a batch; waits while the queue is full (ClickHouse slow or away), unless
    /// shutdown begins: then the batch is left to the WAL (not confirmed).
    pub fn send(&self, batch: RecordBatch, side: SideRows, through_lsn: u64) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let Some(jobs) = self.jobs.as_ref() else {
            return;
        };
        let mut job = Job {
            batch,
            side,
            through_lsn,
        };
        loop {
            match jobs.try_send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    if self.closing.load(Ordering::Acquire) {
                        tracing::warn!("shutting down while ClickHouse cannot take more; the batch stays in the WAL");
                        return;
                    }
                    job = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    self.dead.store(true, Ordering::Release);
                    tracing::error!("the ClickHouse writer is gone; the batch stays in the WAL");
                    return;
                }
            }
        }
    }

    /// The oldest WAL record the writer still holds (a job not yet inserted); `None` when it
    /// holds nothing. Jobs cover consecutive LSN ranges in order, so that is the one after
    /// the last finished job's range.
    pub fn oldest_held(&self) -> Option<u64> {
        let waiting = self.pending.load(Ordering::Acquire) > 0 || self.dead.load(Ordering::Acquire);
        waiting.then(|| self.confirmed.load(Ordering::Acquire) + 1)
    }

    /// Batches ClickHouse refused for their data since the last call.
    pub fn take_rejected(&self) -> Vec<RejectedBatch> {
        self.rejected.try_iter().collect()
    }

    /// Inserts what is queued and stops the thread. A batch whose insert fails while closing
    /// is not retried: it stays unconfirmed, in the WAL, for the next start.
    pub fn close(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.jobs = None;
        self.dead.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClickHouseWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The tables one job inserts into, in this order; each is its own retry unit, so a retry
/// never repeats an insert that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Statuses,
    DeadLetters,
    Readings,
}

impl Part {
    const ALL: [Part; 3] = [Part::Statuses, Part::DeadLetters, Part::Readings];

    fn table(self) -> &'static str {
        match self {
            Part::Statuses => "device_status",
            Part::DeadLetters => "dead_letters",
            Part::Readings => "readings",
        }
    }

    fn is_empty(self, job: &Job) -> bool {
        match self {
            Part::Statuses => job.side.statuses.is_empty(),
            Part::DeadLetters => job.side.dead_letters.is_empty(),
            Part::Readings => job.batch.num_rows() == 0,
        }
    }
}

/// What became of one part of a job.
enum Outcome {
    Inserted,
    /// The server refused the data (a retry sends the same bytes).
    Refused(ClickHouseError),
    /// Shutdown while the server was away: the job stays in the WAL.
    Abandoned,
}

/// The writer's state between jobs.
struct WriterState {
    config: ClickHouseConfig,
    client: clickhouse::Client,
    /// Read once the schema is applied; forgotten after a failure (a table may be gone).
    layout: Option<TableLayout>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    failing_since_ms: Arc<AtomicI64>,
}

impl WriterState {
    async fn insert_once(&mut self, part: Part, job: &Job) -> Result<(), ClickHouseError> {
        let layout = match self.layout {
            Some(layout) => layout,
            None => {
                let version = apply_schema(&self.config).await?;
                let layout = table_layout(&self.config).await?;
                tracing::info!(
                    ?version,
                    modern = version.is_modern(),
                    ?layout,
                    "ClickHouse schema applied"
                );
                self.layout = Some(layout);
                layout
            }
        };
        let db = &self.config.database;
        let started = std::time::Instant::now();
        match part {
            Part::Statuses => insert_statuses(&self.client, db, &job.side.statuses, layout).await?,
            Part::DeadLetters => {
                insert_dead_letters(&self.client, db, &job.side.dead_letters, layout).await?
            }
            Part::Readings => {
                insert_readings(&self.client, db, encode_rowbinary(&job.batch, layout.times))
                    .await?
            }
        }
        metrics::histogram!("meterflow_batch_write_seconds", "sink" => "clickhouse", "table" => part.table())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Inserts one part, retrying with backoff what a retry can fix.
    async fn insert(&mut self, part: Part, job: &Job) -> Outcome {
        let mut delay = Duration::from_millis(self.config.retry_initial_ms.max(1));
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let error = match self.insert_once(part, job).await {
                Ok(()) => {
                    self.failing_since_ms.store(0, Ordering::Release);
                    return Outcome::Inserted;
                }
                Err(e) if !e.is_retryable() => return Outcome::Refused(e),
                Err(e) => e,
            };
            if self.closing.load(Ordering::Acquire) {
                tracing::warn!(error = %error, table = part.table(), "ClickHouse unavailable at shutdown; the batch stays in the WAL for the next start");
                return Outcome::Abandoned;
            }
            metrics::counter!("meterflow_clickhouse_retries_total").increment(1);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as i64);
            let _ = self.failing_since_ms.compare_exchange(
                0,
                now_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(error = %error, table = part.table(), attempt, retry_in_ms = delay.as_millis() as u64, "ClickHouse insert failed; retrying");
            }
            // The schema may be what is missing (a dropped table): apply it again.
            self.layout = None;
            let jitter =
                Duration::from_millis(u64::from(attempt.wrapping_mul(2_654_435_761) % 100));
            let until = tokio::time::Instant::now() + delay + jitter;
            while tokio::time::Instant::now() < until && !self.closing.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            delay = (delay * 2).min(Duration::from_millis(self.config.retry_max_ms.max(1)));
        }
    }
}

async fn run_writer(
    config: ClickHouseConfig,
    jobs: Receiver<Job>,
    rejected: std::sync::mpsc::Sender<RejectedBatch>,
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    failing_since_ms: Arc<AtomicI64>,
) {
    let mut state = WriterState {
        client: config.client(),
        config,
        layout: None,
        closing,
        failing_since_ms,
    };
    // The std receiver blocks; the runtime has nothing else to do meanwhile.
    while let Ok(job) = jobs.recv() {
        for part in Part::ALL {
            if part.is_empty(&job) {
                continue;
            }
            match state.insert(part, &job).await {
                Outcome::Inserted => {
                    if part == Part::Readings {
                        metrics::counter!("meterflow_rows_written_total", "sink" => "clickhouse")
                            .increment(job.batch.num_rows() as u64);
                    }
                }
                Outcome::Refused(e) => {
                    metrics::counter!("meterflow_clickhouse_rejected_batches_total", "table" => part.table())
                        .increment(1);
                    if part == Part::Readings {
                        tracing::error!(error = %e, rows = job.batch.num_rows(), "ClickHouse refused the batch's data; its rows go to the dead letters");
                        let _ = rejected.send(RejectedBatch {
                            batch: job.batch.clone(),
                            reason: e.to_string(),
                        });
                    } else {
                        // The dead-letter files and the device state keep these.
                        tracing::error!(error = %e, table = part.table(), "ClickHouse refused these rows; they are not in ClickHouse");
                    }
                }
                Outcome::Abandoned => {
                    // Not confirmed, and `pending` stays up: the checkpoint stops before it.
                    while jobs.recv().is_ok() {}
                    return;
                }
            }
        }
        confirmed.fetch_max(job.through_lsn, Ordering::AcqRel);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};

    #[test]
    fn versions_parse_and_decide_the_types() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("25.3.2.39").unwrap();
        assert!(!old.is_modern());
        assert!(new.is_modern());
        let old_ddl = schema_ddl("mf", old, 30).join("\n");
        assert!(old_ddl.contains("ts DateTime,"));
        assert!(
            !old_ddl.contains("LowCardinality")
                && !old_ddl.contains("CODEC")
                && !old_ddl.contains("TTL")
        );
        let new_ddl = schema_ddl("mf", new, 30).join("\n");
        assert!(new_ddl.contains("ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1))"));
        assert!(new_ddl.contains("channel LowCardinality(String)"));
        assert!(new_ddl.contains("TTL toDateTime(ts) + INTERVAL 30 DAY"));
        assert!(new_ddl.contains("ENGINE = ReplacingMergeTree(received_at)"));
        assert!(new_ddl.contains("ORDER BY (meter_id, channel, ts)"));
    }

    #[test]
    fn rowbinary_has_the_column_layout_of_each_server() {
        let mut b = ReadingBatchBuilder::default();
        let meta = RowMeta {
            meter_id: "m1",
            received_at_ms: 1_709_337_600_999,
            source: Source::Mqtt,
            format: Format::Pb,
        };
        b.append(&meta, "1-0:1.8.0", 1_709_337_600_500, 1.5, "kWh", 3);
        let batch = b.finish();
        let old = encode_rowbinary(&batch, TimeColumns::Seconds);
        let mut want = vec![2, b'm', b'1', 9];
        want.extend_from_slice(b"1-0:1.8.0");
        want.extend_from_slice(&1_709_337_600u32.to_le_bytes());
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[3, b'k', b'W', b'h']);
        want.extend_from_slice(&3u16.to_le_bytes());
        want.extend_from_slice(&1_709_337_600u32.to_le_bytes());
        want.extend_from_slice(&[4, b'm', b'q', b't', b't', 2, b'p', b'b']);
        assert_eq!(old, want);
        let new = encode_rowbinary(&batch, TimeColumns::Millis);
        assert_eq!(
            new.len(),
            old.len() + 8,
            "two Int64 times instead of two UInt32"
        );
    }

    #[test]
    fn status_rows_encode_nullable_fields() {
        let row = StatusRow {
            meter_id: "m".into(),
            at_ms: 2_000,
            battery_pct: Some(87),
            firmware: Some("1".into()),
            source: "mqtt".into(),
            lsn: 7,
            ..Default::default()
        };
        let bytes =
            encode_status_rowbinary(std::slice::from_ref(&row), TimeColumns::Seconds, false);
        let mut want = vec![1, b'm'];
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(&[0, 87, 1, 1, 1, 0, 1, b'1', 1, 4, b'm', b'q', b't', b't']);
        assert_eq!(bytes, want, "a table of an earlier version: no lsn column");
        want.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(
            encode_status_rowbinary(&[row], TimeColumns::Seconds, true),
            want
        );
    }

    #[test]
    fn data_errors_are_not_retried() {
        let data = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse(
                "Code: 117. DB::Exception: Unknown type".into(),
            ),
        };
        assert!(!data.is_retryable());
        let old_server = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse(
                "Code: 53, e.displayText() = DB::Exception: Type mismatch".into(),
            ),
        };
        assert_eq!(old_server.code(), Some(53));
        assert!(!old_server.is_retryable());
        let busy = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse("Code: 252. Too many parts".into()),
        };
        assert!(busy.is_retryable());
        let net = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::TimedOut,
        };
        assert!(net.is_retryable());
    }
}
