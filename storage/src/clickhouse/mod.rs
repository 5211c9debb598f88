//! The ClickHouse sink, laid out as Vector's is:
//!
//! - [`schema`]: the server version, the version-aware DDL (`meterflow schema`), and the
//!   layout of the tables as they are on the server (tables of earlier versions keep working);
//! - [`native`]: readings as Native blocks built straight from the Arrow batch (the hot path);
//! - [`encode`]: status reports and dead letters as RowBinary (and readings, for a table whose
//!   column types the Native encoder does not write);
//! - [`connection`]: the server's URL, login and TLS, as every client of meterflow uses them;
//! - [`error`]: what failed and whether a retry can help (the retry classification);
//! - [`queue`]: the writer's job queue, in memory and, beyond it, in the spool on disk (so
//!   the pipeline goes on while ClickHouse is away, and the backlog goes in as built batches);
//! - [`writer`]: the writer thread: a queue of jobs, merged into large inserts when they wait,
//!   several inserts in flight while the WAL is confirmed only through a contiguous prefix,
//!   each table of a job its own retry unit, exponential backoff with jitter, batches the
//!   server refused handed back as dead letters.
//!
//! Schema: database `meterflow` (configurable), `readings` a ReplacingMergeTree ordered by
//! `(meter_id, channel, ts)` and partitioned by month, so a reading delivered twice is stored
//! once after merges (queries dedupe with `FINAL` or `argMax` before that); hourly and daily
//! rollups per meter and channel as materialized views; `device_status` and `dead_letters`
//! ReplacingMergeTrees keyed by the WAL position, so a repeated insert is one row. On a server
//! from 20.5 on it uses `LowCardinality`, `DateTime64(3)`, codecs and an optional TTL; on older
//! ones (Debian's 18.16) plain `String` and `DateTime` (second precision).

pub mod connection;
pub mod encode;
pub mod error;
pub mod native;
pub mod queue;
pub mod schema;
pub mod writer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::StorageError;

pub use encode::{
    encode_dead_letter_rowbinary, encode_rowbinary, encode_status_rowbinary, DeadLetterRow,
    SideRows, StatusRow,
};
pub use error::ClickHouseError;
pub use native::{NativeType, ReadingsNative};
pub use queue::SpoolConfig;
pub use schema::{
    apply_schema, schema_ddl, server_version, table_layout, time_columns, ServerVersion,
    TableLayout, TimeColumns, Topology,
};
pub use writer::{ClickHouseWriter, RejectedBatch};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP(S) URL of the server, e.g. `http://127.0.0.1:8123` or
    /// `https://abc.clickhouse.cloud:8443`; empty: no ClickHouse sink. A login in it
    /// (`http://USER:PASSWORD@host`, percent-encoded) is moved into `user` and `password`.
    pub url: String,
    pub database: String,
    /// A cluster of the servers' `remote_servers` (e.g. `meterflow`): the schema is made
    /// `ON CLUSTER` as Replicated `*_local` tables per shard behind Distributed tables of the
    /// usual names, and inserts wait until the rows are on their shards
    /// (`insert_distributed_sync = 1`). Empty: one server.
    pub cluster: String,
    /// The login, sent as ClickHouse's `X-ClickHouse-User` / `X-ClickHouse-Key` headers.
    pub user: String,
    pub password: String,
    /// CA certificates (PEM) that an `https://` server's certificate chains to. None: the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
    /// Drop readings older than this many days (servers from 20.5 on); 0 keeps them forever.
    pub ttl_days: u32,
    /// First retry delay after a failed insert; doubled per attempt up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Batches waiting for the writer in memory at most; beyond them batches wait in the
    /// spool on disk (`serve` only; `meterflow import` waits).
    pub queue_batches: usize,
    /// Bytes of the spool (`{data_dir}/clickhouse-spool/`) at most: batches that wait for
    /// ClickHouse beyond `queue_batches`, as LZ4 Arrow files, so that Parquet and the device
    /// state go on during an outage and the backlog goes in as built batches. When it is
    /// full, the pipeline waits and the WAL holds what arrives. 0: no spool.
    pub spool_max_bytes: u64,
    /// Inserts in flight at once: the next one is encoded and sent while the server still
    /// works on the previous. The WAL is confirmed only through the oldest unfinished one.
    pub max_inflight_inserts: usize,
    /// Batches waiting in the queue (a backlog, ClickHouse back after an outage) are merged
    /// into one INSERT of up to this many rows: fewer, larger parts.
    pub max_insert_rows: usize,
    /// How readings are sent: `native` (columns built from the Arrow batch) or `rowbinary`.
    pub insert_format: InsertFormat,
    /// Compression of insert bodies: `none`, `lz4` or `zstd` (ClickHouse's own block
    /// framing, `decompress=1`). Reads are not, but for the answers of `meterflow query`
    /// (`Accept-Encoding: lz4`, which servers from 25.10 on honour).
    pub compression: InsertCompression,
    /// ClickHouse settings sent with every query and insert, e.g. `insert_quorum = "2"` or
    /// `max_insert_threads = "2"` (names of letters, digits and `_`).
    pub settings: std::collections::BTreeMap<String, String>,
}

/// Written by hand so that `password` never reach a log or an error.
impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field named, without `..`: a new one does not compile until it is shown here
        // (or chosen not to be).
        let ClickHouseConfig {
            url,
            database,
            cluster,
            user,
            password,
            tls_ca,
            ttl_days,
            retry_initial_ms,
            retry_max_ms,
            queue_batches,
            spool_max_bytes,
            max_inflight_inserts,
            max_insert_rows,
            insert_format,
            compression,
            settings,
        } = self;
        f.debug_struct("ClickHouseConfig")
            // The URL may carry the login (`http://USER:PASSWORD@host`, `?password=`).
            .field("url", &crate::url_without_password(url))
            .field("database", database)
            .field("cluster", cluster)
            .field("user", user)
            .field("password", &crate::redacted(password))
            .field("tls_ca", tls_ca)
            .field("ttl_days", ttl_days)
            .field("retry_initial_ms", retry_initial_ms)
            .field("retry_max_ms", retry_max_ms)
            .field("queue_batches", queue_batches)
            .field("spool_max_bytes", spool_max_bytes)
            .field("max_inflight_inserts", max_inflight_inserts)
            .field("max_insert_rows", max_insert_rows)
            .field("insert_format", insert_format)
            .field("compression", compression)
            .field("settings", settings)
            .finish()
    }
}

/// How readings go over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertFormat {
    /// ClickHouse's columnar Native format, built from the Arrow batch (the default).
    Native,
    /// Row by row; for a table whose column types the Native encoder does not know.
    RowBinary,
}

/// Compression of insert bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InsertCompression {
    None,
    Lz4,
    Zstd,
}

impl InsertCompression {
    pub(crate) fn for_client(self) -> clickhouse::Compression {
        match self {
            InsertCompression::None => clickhouse::Compression::None,
            InsertCompression::Lz4 => clickhouse::Compression::Lz4,
            InsertCompression::Zstd => clickhouse::Compression::Zstd(1),
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: String::new(),
            database: "meterflow".into(),
            cluster: String::new(),
            user: "default".into(),
            password: String::new(),
            tls_ca: None,
            ttl_days: 0,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            queue_batches: 10,
            spool_max_bytes: 4 << 30,
            max_inflight_inserts: 2,
            max_insert_rows: 1_000_000,
            insert_format: InsertFormat::Native,
            compression: InsertCompression::Lz4,
            settings: Default::default(),
        }
    }
}

impl ClickHouseConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The server as logs and names may show it: `scheme://host:port`, without the
    /// credentials a URL may carry (`user:password@`, `?password=`).
    pub fn server_for_logs(&self) -> String {
        let url = &self.url;
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        // The authority ends at the first `/`, `?` or `#`; credentials end at its last `@`.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        format!("{scheme}://{host}")
    }

    /// Moves a login in the URL (`http://USER:PASSWORD@host`, `?user=&password=`) into
    /// `user` and `password`, so that it is sent, and shown nowhere; an error names the key
    /// when the URL and the keys give different ones.
    pub fn take_url_login(&mut self) -> Result<(), StorageError> {
        let endpoint = connection::endpoint(self)?;
        self.url = endpoint.url;
        self.user = endpoint.user;
        self.password = endpoint.password;
        Ok(())
    }

    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), StorageError> {
        let lower = self.url.to_ascii_lowercase();
        if self.enabled() && !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(StorageError::config(
                "clickhouse.url",
                "must be an HTTP or HTTPS URL such as http://127.0.0.1:8123 or https://host:8443",
            ));
        }
        if self.enabled() {
            connection::endpoint(self)?;
            if connection::is_https(&self.url) {
                connection::tls_config(self.tls_ca.as_deref())?;
            } else if self.tls_ca.is_some() {
                return Err(StorageError::config(
                    "clickhouse.tls_ca",
                    "is for an https:// clickhouse.url; this one is plain http://",
                ));
            }
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
        if !self
            .cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StorageError::config(
                "clickhouse.cluster",
                "must be a cluster name of letters, digits and _ (from the servers' remote_servers)",
            ));
        }
        StorageError::positive("clickhouse.queue_batches", self.queue_batches as u64)?;
        StorageError::positive(
            "clickhouse.max_inflight_inserts",
            self.max_inflight_inserts as u64,
        )?;
        StorageError::positive("clickhouse.max_insert_rows", self.max_insert_rows as u64)?;
        for name in self.settings.keys() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(StorageError::config(
                    "clickhouse.settings",
                    format!("{name:?} is not a setting name (letters, digits and _)"),
                ));
            }
        }
        StorageError::positive("clickhouse.retry_initial_ms", self.retry_initial_ms)
    }

    /// The client for queries and DDL: the login, TLS for `https://`, the settings, and no
    /// compression.
    pub(crate) fn connect(&self) -> Result<clickhouse::Client, StorageError> {
        let mut client = connection::client(self)?
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        for (name, value) in &self.settings {
            client = client.with_setting(name, value);
        }
        Ok(client)
    }

    /// [`Self::connect`] for the readers, whose errors are [`ClickHouseError`]s (a CA file
    /// gone since the config was checked).
    pub(crate) fn client(&self) -> Result<clickhouse::Client, ClickHouseError> {
        self.connect().map_err(|e| ClickHouseError {
            action: "connecting",
            source: clickhouse::error::Error::Custom(e.to_string()),
        })
    }

    /// The client for inserts: bodies compressed as `compression` says; on a cluster, an
    /// insert into a Distributed table returns once every shard has its rows (unless
    /// `clickhouse.settings` says otherwise).
    pub(crate) fn insert_client(&self) -> Result<clickhouse::Client, StorageError> {
        let mut client = self
            .connect()?
            .with_compression(self.compression.for_client());
        if !self.cluster.is_empty() && !self.settings.contains_key("insert_distributed_sync") {
            client = client.with_setting("insert_distributed_sync", "1");
        }
        Ok(client)
    }

    /// One server, or the cluster.
    pub fn topology(&self) -> Topology<'_> {
        if self.cluster.is_empty() {
            Topology::Single
        } else {
            Topology::Cluster(&self.cluster)
        }
    }
}

/// A string as a ClickHouse literal.
pub(crate) fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// How time columns of the small tables (VEE's, the registry's) are read and bounded, by the server's time type:
/// (the column as Unix ms, a bound in ms as a literal of the column's type).
pub(crate) fn time_sql(
    times: crate::clickhouse::TimeColumns,
    column: &str,
) -> (String, fn(i64) -> String) {
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
