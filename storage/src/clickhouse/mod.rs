//! The ClickHouse sink, laid out as Vector's is:
//!
//! - [`schema`]: the server version, the version-aware DDL (`meterflow schema`), and the
//!   layout of the tables as they are on the server (tables of earlier versions keep working);
//! - [`encode`]: the rows (readings from the Arrow batch, status reports, dead letters) as
//!   RowBinary, column by column;
//! - [`error`]: what failed and whether a retry can help (the retry classification);
//! - [`writer`]: the writer thread: a queue of jobs, each table of a job its own retry unit,
//!   exponential backoff with jitter, batches the server refused handed back as dead letters.
//!
//! Schema: database `meterflow` (configurable), `readings` a ReplacingMergeTree ordered by
//! `(meter_id, channel, ts)` and partitioned by month, so a reading delivered twice is stored
//! once after merges (queries dedupe with `FINAL` or `argMax` before that); hourly and daily
//! rollups per meter and channel as materialized views; `device_status` and `dead_letters`
//! ReplacingMergeTrees keyed by the WAL position, so a repeated insert is one row. On a server
//! from 20.5 on it uses `LowCardinality`, `DateTime64(3)`, codecs and an optional TTL; on older
//! ones (Debian's 18.16) plain `String` and `DateTime` (second precision).

pub mod encode;
pub mod error;
pub mod schema;
pub mod writer;

use serde::{Deserialize, Serialize};

use crate::StorageError;

pub use encode::{
    encode_dead_letter_rowbinary, encode_rowbinary, encode_status_rowbinary, DeadLetterRow,
    SideRows, StatusRow,
};
pub use error::ClickHouseError;
pub use schema::{
    apply_schema, schema_ddl, server_version, table_layout, time_columns, ServerVersion,
    TableLayout, TimeColumns,
};
pub use writer::{insert_batch, ClickHouseWriter, RejectedBatch};

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

    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.enabled() && !(self.url.starts_with("http://") || self.url.starts_with("https://"))
        {
            return Err(StorageError::config(
                "clickhouse.url",
                "must be an HTTP URL such as http://127.0.0.1:8123 (https needs a TLS build)",
            ));
        }
        if self.database.is_empty()
            || !self
                .database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StorageError::config(
                "clickhouse.database",
                "must be a name of letters, digits and _",
            ));
        }
        StorageError::positive("clickhouse.queue_batches", self.queue_batches as u64)?;
        StorageError::positive("clickhouse.retry_initial_ms", self.retry_initial_ms)
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
