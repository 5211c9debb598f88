//! The server version, the version-aware DDL of every object (`meterflow schema`), and the
//! layout of the tables as the server has them.

use std::sync::Arc;

use super::{ClickHouseConfig, ClickHouseError, ReadingsNative};

/// `major.minor` of the server, which decides the column types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
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

/// Where the schema goes: one server, or a cluster from the servers' `remote_servers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology<'a> {
    Single,
    /// Per shard `{table}_local` as a Replicated* table (ZooKeeper path by the `{shard}`
    /// macro, replica by `{replica}`), and `{table}` a Distributed table over them, so that
    /// every reader (`meterflow query`, Grafana, the device rebuild) works unchanged. Created
    /// `ON CLUSTER`, so one statement reaches every server.
    Cluster(&'a str),
}

/// One table of the schema, as `CREATE TABLE` parts.
struct TableDdl<'a> {
    name: &'a str,
    columns: String,
    /// A MergeTree-family engine with its arguments, e.g. `ReplacingMergeTree(received_at)`.
    engine: &'a str,
    rest: String,
    /// How a cluster spreads its rows over the shards: rows that replace each other must
    /// meet on one shard.
    sharding_key: &'a str,
}

/// `ReplacingMergeTree(x)` as `ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}', x)`.
fn replicated(engine: &str, db: &str, table: &str) -> String {
    let (name, args) = engine.split_once('(').unwrap_or((engine, ")"));
    let args = args.trim_end_matches(')');
    let path = format!("'/clickhouse/tables/{{shard}}/{db}/{table}', '{{replica}}'");
    if args.trim().is_empty() {
        format!("Replicated{name}({path})")
    } else {
        format!("Replicated{name}({path}, {args})")
    }
}

impl TableDdl<'_> {
    fn statements(&self, db: &str, topology: Topology<'_>) -> Vec<String> {
        let TableDdl {
            name,
            columns,
            engine,
            rest,
            sharding_key,
        } = self;
        match topology {
            Topology::Single => vec![format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name} (\n{columns}\n) ENGINE = {engine}\n{rest}"
            )],
            Topology::Cluster(cluster) => {
                let local = format!("{name}_local");
                vec![
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{local} ON CLUSTER {cluster} (\n{columns}\n) ENGINE = {}\n{rest}",
                        replicated(engine, db, &local)
                    ),
                    format!(
                        "CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER {cluster} AS {db}.{local}\nENGINE = Distributed({cluster}, {db}, {local}, {sharding_key})"
                    ),
                ]
            }
        }
    }
}

/// The DDL of every object, in the order to create them; each statement is idempotent.
pub fn schema_ddl(
    db: &str,
    version: ServerVersion,
    ttl_days: u32,
    topology: Topology<'_>,
) -> Vec<String> {
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
    let on_cluster = match topology {
        Topology::Single => String::new(),
        Topology::Cluster(cluster) => format!(" ON CLUSTER {cluster}"),
    };
    // Where rows are written: the table itself, or each shard's local table.
    let written = |name: &str| match topology {
        Topology::Single => name.to_string(),
        Topology::Cluster(_) => format!("{name}_local"),
    };
    let mut ddl = vec![format!("CREATE DATABASE IF NOT EXISTS {db}{on_cluster}")];
    ddl.extend(
        TableDdl {
            name: "readings",
            columns: format!(
                "    meter_id String{meter_codec},
    channel {channel},
    ts {time}{ts_codec},
    value Float64{value_codec},
    unit {unit},
    quality UInt16,
    received_at {time}{ts_codec},
    source {source},
    format {format}",
                meter_codec = codec("ZSTD(1)"),
                channel = lc("String"),
                ts_codec = codec("DoubleDelta, ZSTD(1)"),
                value_codec = codec("Gorilla, ZSTD(1)"),
                unit = lc("String"),
                source = lc("String"),
                format = lc("String"),
            ),
            engine: "ReplacingMergeTree(received_at)",
            rest: format!("PARTITION BY toYYYYMM(ts)\nORDER BY (meter_id, channel, ts){ttl}"),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    for (name, bucket, column) in [
        ("readings_hourly", "toStartOfHour(ts)", "hour"),
        ("readings_daily", "toDate(ts)", "day"),
    ] {
        // Per shard in a cluster: a meter's rows are all on its shard, so its rollups are.
        let view = written(name);
        let engine = match topology {
            Topology::Single => "AggregatingMergeTree()".to_string(),
            Topology::Cluster(_) => replicated("AggregatingMergeTree()", db, &view),
        };
        ddl.push(format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view}{on_cluster}
ENGINE = {engine}
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
FROM {db}.{readings}
GROUP BY meter_id, channel, {column}",
            readings = written("readings"),
        ));
        if let Topology::Cluster(cluster) = topology {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name}{on_cluster} AS {db}.{view}\nENGINE = Distributed({cluster}, {db}, {view}, cityHash64(meter_id))"
            ));
        }
    }
    ddl.extend(
        TableDdl {
            name: "device_status",
            columns: format!(
                "    meter_id String,
    at {time},
    battery_pct Nullable(UInt8),
    rssi_dbm Nullable(Int32),
    rsrp_dbm Nullable(Int32),
    snr_db Nullable(Float32),
    firmware Nullable(String),
    error_flags Nullable(UInt32),
    source String,
    lsn UInt64,
    ts {time} DEFAULT at"
            ),
            engine: "ReplacingMergeTree()",
            rest: "PARTITION BY toYYYYMM(at)\nORDER BY (meter_id, at, lsn)".into(),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    ddl.extend(
        TableDdl {
            name: "dead_letters",
            columns: format!(
                "    received_at {time},
    source String,
    topic String,
    meter_id String,
    format String,
    kind String,
    reason String,
    payload String,
    lsn UInt64"
            ),
            engine: "ReplacingMergeTree()",
            rest: "PARTITION BY toYYYYMM(received_at)\nORDER BY (received_at, meter_id, lsn)"
                .into(),
            sharding_key: "cityHash64(meter_id, lsn)",
        }
        .statements(db, topology),
    );
    // The meter registry: each import's records under its time, then a marker row; the
    // newest whole import is the registry (storage::registry).
    ddl.extend(
        TableDdl {
            name: "meters",
            columns: format!(
                "    imported_at Int64,
    meter_id String,
    kind {text},
    model String,
    expected_interval_s Nullable(UInt32),
    district String,
    feeder String,
    transformer String,
    role {text},
    import_only UInt8,
    tariff String,
    valid_from Nullable({time}),
    valid_to Nullable({time}),
    line UInt64,
    report_interval_s Nullable(UInt32)",
                text = lc("String"),
            ),
            engine: "ReplacingMergeTree()",
            rest: "ORDER BY (imported_at, meter_id, line)".into(),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    // Meter events: one of each (meter, second, kind, code), however often reported.
    ddl.extend(
        TableDdl {
            name: "events",
            columns: format!(
                "    meter_id String,
    ts {time},
    kind {text},
    severity {text},
    source {text},
    code String,
    detail String,
    raw String",
                text = lc("String"),
            ),
            engine: "ReplacingMergeTree()",
            // By year: a meter's log reaches back years (a DSMR power-failure log), and one
            // insert must not span more months than a server takes in one block.
            rest: "PARTITION BY toYear(ts)\nORDER BY (meter_id, ts, kind, code)".into(),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    // VEE's versions: each value's latest by `version` (the run's time, Unix ms); the actual
    // reads in `readings` are never touched.
    ddl.extend(
        TableDdl {
            name: "readings_vee",
            columns: format!(
                "    meter_id String,
    channel {channel},
    ts {time},
    value Float64,
    unit {unit},
    quality {text},
    rule {text},
    method {text},
    version Int64,
    vee_run {text}",
                channel = lc("String"),
                unit = lc("String"),
                text = lc("String"),
            ),
            engine: "ReplacingMergeTree(version)",
            rest: "PARTITION BY toYYYYMM(ts)\nORDER BY (meter_id, channel, ts)".into(),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    // VEE's runs (period, meters, parameters, counts) and the exceptions each found; a
    // period's exceptions are those of the latest run that judged it (storage::vee::runs).
    ddl.extend(
        TableDdl {
            name: "vee_runs",
            columns: format!(
                "    run_id Int64,
    period_from {time},
    period_to {time},
    timezone String,
    meter String,
    trigger String,
    parameters String,
    meters UInt64,
    exceptions UInt64,
    mended UInt64,
    version_written UInt8"
            ),
            engine: "ReplacingMergeTree()",
            rest: "ORDER BY run_id".into(),
            sharding_key: "cityHash64(run_id)",
        }
        .statements(db, topology),
    );
    ddl.extend(
        TableDdl {
            name: "vee_exceptions",
            columns: format!(
                "    run_id Int64,
    day Date,
    meter_id String,
    channel {text},
    rule {text},
    from_ts {time},
    to_ts {time},
    detail String,
    estimated UInt8,
    mended UInt32,
    method {text}",
                text = lc("String"),
            ),
            engine: "ReplacingMergeTree()",
            rest: "PARTITION BY toYYYYMM(from_ts)\nORDER BY (meter_id, from_ts, channel, rule, run_id)"
                .into(),
            sharding_key: "cityHash64(meter_id)",
        }
        .statements(db, topology),
    );
    ddl
}

/// Reads the server version.
pub async fn server_version(config: &ClickHouseConfig) -> Result<ServerVersion, ClickHouseError> {
    let text = config
        .client()?
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

/// Every object of the schema on a cluster (the Distributed tables and what is behind them).
const CLUSTER_OBJECTS: [&str; 20] = [
    "readings",
    "readings_local",
    "readings_hourly",
    "readings_hourly_local",
    "readings_daily",
    "readings_daily_local",
    "device_status",
    "device_status_local",
    "dead_letters",
    "dead_letters_local",
    "events",
    "events_local",
    "meters",
    "meters_local",
    "readings_vee",
    "readings_vee_local",
    "vee_runs",
    "vee_runs_local",
    "vee_exceptions",
    "vee_exceptions_local",
];

/// Creates the database, tables and rollups that are missing; returns the server version.
/// `only_if_missing` (the writer) leaves a cluster's complete schema alone: distributed DDL
/// waits for every server, and a replica down must not hold ingest. `meterflow schema
/// --apply` runs it always.
pub async fn apply_schema(
    config: &ClickHouseConfig,
    only_if_missing: bool,
) -> Result<ServerVersion, ClickHouseError> {
    let version = server_version(config).await?;
    let client = config.client()?;
    if let (Topology::Cluster(cluster), true) = (config.topology(), only_if_missing) {
        let db = &config.database;
        let names = CLUSTER_OBJECTS
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let present = client
            .query(&format!(
                "SELECT count() FROM system.tables WHERE database = '{db}' AND name IN ({names})"
            ))
            .fetch_one::<u64>()
            .await
            .map_err(|source| ClickHouseError {
                action: "looking for the cluster's tables",
                source,
            })?;
        if present == CLUSTER_OBJECTS.len() as u64 {
            // Only where this node lacks it: distributed DDL must not hold ingest.
            add_later_columns(config, &client, false).await?;
            return Ok(version);
        }
        tracing::info!(cluster, database = %db, "creating the schema on the cluster");
    }
    for statement in schema_ddl(
        &config.database,
        version,
        config.ttl_days,
        config.topology(),
    ) {
        client
            .query(&statement)
            .execute()
            .await
            .map_err(|source| ClickHouseError {
                action: "applying the schema",
                source,
            })?;
    }
    add_later_columns(config, &client, !only_if_missing).await?;
    Ok(version)
}

/// A column added to a table after the table was first made: `table`'s `column`, of the
/// type of its column `like` (or `kind` when given), with `default` (an expression) if any.
struct LaterColumn {
    table: &'static str,
    column: &'static str,
    like: &'static str,
    kind: Option<&'static str>,
    default: Option<&'static str>,
}

/// The columns tables of earlier versions lack: `device_status.ts` (a report's own time,
/// `DEFAULT at`), `readings_vee.vee_run` (the run's time and parameters),
/// `vee_exceptions.day` (the local day of an exception, `DEFAULT toDate(from_ts)`),
/// `meters.report_interval_s` (how often a meter reports).
const LATER_COLUMNS: [LaterColumn; 4] = [
    LaterColumn {
        table: "device_status",
        column: "ts",
        like: "at",
        kind: None,
        default: Some("at"),
    },
    LaterColumn {
        table: "readings_vee",
        column: "vee_run",
        like: "quality",
        kind: None,
        default: None,
    },
    LaterColumn {
        table: "vee_exceptions",
        column: "day",
        like: "from_ts",
        kind: Some("Date"),
        default: Some("toDate(from_ts)"),
    },
    LaterColumn {
        table: "meters",
        column: "report_interval_s",
        like: "expected_interval_s",
        kind: None,
        default: None,
    },
];

/// Adds [`LATER_COLUMNS`] to tables made before they existed. 18.16 has no `ADD COLUMN IF
/// NOT EXISTS`: on a single server the columns are read first; on a cluster the node this
/// client talks to cannot speak for the others, so with `every_node` (`meterflow schema
/// --apply`) each shard's `{table}_local` gets `ALTER ... ON CLUSTER ... ADD COLUMN` whatever
/// this node has, and a node that has the column already answers "exists" (Code 44; 15 on
/// some servers), which counts as done. The Distributed `{table}` gets it (`ON CLUSTER`)
/// only where this node lacks it: 18.16 refuses an `ALTER ... ON CLUSTER` of a table that is
/// not replicated on replicated shards (Code 371) once every node has it, so it cannot be
/// sent every time. Without `every_node` (the writer's start, which a replica down must not
/// hold: distributed DDL waits for every server) only where this node lacks the column.
async fn add_later_columns(
    config: &ClickHouseConfig,
    client: &clickhouse::Client,
    every_node: bool,
) -> Result<(), ClickHouseError> {
    for later in &LATER_COLUMNS {
        add_later_column(config, client, every_node, later).await?;
    }
    Ok(())
}

async fn add_later_column(
    config: &ClickHouseConfig,
    client: &clickhouse::Client,
    every_node: bool,
    later: &LaterColumn,
) -> Result<(), ClickHouseError> {
    let db = &config.database;
    let LaterColumn {
        table: base,
        column,
        like,
        kind,
        default,
    } = later;
    let local = format!("{base}_local");
    let err = |source| ClickHouseError {
        action: "adding a column of a later version",
        source,
    };
    let columns = client
        .query(&format!(
            "SELECT table, name, type FROM system.columns WHERE database = '{db}' \
             AND table IN ('{base}', '{local}') AND name IN ('{like}', '{column}')"
        ))
        .fetch_all::<ColumnType>()
        .await
        .map_err(err)?;
    let (tables, on_cluster) = match config.topology() {
        Topology::Single => (vec![base.to_string()], None),
        Topology::Cluster(cluster) => (
            vec![local.clone(), base.to_string()],
            Some(format!(" ON CLUSTER {cluster}")),
        ),
    };
    for table in &tables {
        let Some(model) = columns
            .iter()
            .find(|c| &c.table == table && c.name == *like)
        else {
            continue;
        };
        let here = columns
            .iter()
            .any(|c| &c.table == table && c.name == *column);
        // The Distributed table only where this node lacks the column: 18.16 refuses an
        // ALTER ON CLUSTER of it on replicated shards (Code 371, "isn't replicated").
        let every = every_node && on_cluster.is_some() && *table == local;
        if here && !every {
            continue;
        }
        let sql = format!(
            "ALTER TABLE {db}.{table}{} ADD COLUMN {column} {}{}",
            on_cluster.as_deref().unwrap_or(""),
            kind.unwrap_or(&model.kind),
            default.map(|d| format!(" DEFAULT {d}")).unwrap_or_default()
        );
        if add_column(client, &sql, "adding a column of a later version").await? && !here {
            tracing::info!(database = %db, table, column, "added a column to a table of an earlier version");
        }
    }
    Ok(())
}

/// [`add_column`] on the server of `config` (for tests on a real server).
#[doc(hidden)]
pub async fn add_column_on(config: &ClickHouseConfig, sql: &str) -> Result<bool, ClickHouseError> {
    add_column(&config.client()?, sql, "adding a column").await
}

/// Runs `ALTER ... ADD COLUMN` (`sql`): `true` when it added the column, `false` when the
/// server (or a node of the cluster) says the column exists already (Code 44, as 18.16
/// answers; 15 on some servers), which is done too.
async fn add_column(
    client: &clickhouse::Client,
    sql: &str,
    action: &'static str,
) -> Result<bool, ClickHouseError> {
    match client.query(sql).execute().await {
        Ok(()) => Ok(true),
        Err(source) => {
            let e = ClickHouseError { action, source };
            if is_duplicate_column(&e) {
                Ok(false)
            } else if still_running_on_cluster(&e, sql) {
                tracing::warn!(error = %e, "a column of a later version is still being added on some servers of the cluster (ClickHouse finishes it in the background; `meterflow schema --apply` again confirms it)");
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Whether `e` says a server of the cluster had not run the distributed `sql` within
/// `distributed_ddl_task_timeout` (Code 159; a busy server): ClickHouse keeps it queued and
/// runs it there in the background. For adding a column (which new tables have already) that
/// is not a failure.
fn still_running_on_cluster(e: &ClickHouseError, sql: &str) -> bool {
    e.code() == Some(159) && sql.contains(" ON CLUSTER ")
}

/// Whether `e` says the column to add exists already (Code 44 `ILLEGAL_COLUMN`, "column with
/// this name already exists", as 18.16 and later answer; Code 15 `DUPLICATE_COLUMN`).
/// Code 44 is any illegal column too, so its text must say so.
fn is_duplicate_column(e: &ClickHouseError) -> bool {
    match e.code() {
        Some(15) => true,
        Some(44) => e.to_string().contains("already exists"),
        _ => false,
    }
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

/// Reads the type of `readings.ts` from `system.columns` (for readers of `readings`).
pub async fn time_columns(config: &ClickHouseConfig) -> Result<TimeColumns, ClickHouseError> {
    let db = &config.database;
    let kind = config
        .client()?
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
/// an earlier meterflow, or on an older server, keep working).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    /// The column types of `readings` as the Native encoder writes them; `None` when a
    /// column has a type it does not know (then readings go as RowBinary).
    pub readings_native: Option<Arc<ReadingsNative>>,
    /// How `readings` stores `ts` and `received_at`.
    pub times: TimeColumns,
    /// How `device_status` stores `at` (each table by its own column: a table made again on
    /// an upgraded server may differ from `readings`).
    pub status_times: TimeColumns,
    /// How `dead_letters` stores `received_at`.
    pub dead_letter_times: TimeColumns,
    /// How `events` stores `ts`.
    pub event_times: TimeColumns,
    /// `device_status` is a ReplacingMergeTree with the `lsn` column (made by this version):
    /// a repeated insert is harmless. Otherwise (an earlier version's MergeTree, even with an
    /// `lsn` column added) a retry may leave a duplicate, and no `lsn` is sent unless the
    /// column exists.
    pub status_lsn: bool,
    /// `device_status` has the `ts` column (the report's own time; made by this version, or
    /// added to an earlier table by [`apply_schema`]).
    pub status_ts: bool,
    /// The same for `dead_letters`.
    pub dead_letter_lsn: bool,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct ColumnType {
    table: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct TableEngine {
    name: String,
    engine: String,
}

/// Whether `readings` is what the config says: a Distributed table with `clickhouse.cluster`
/// (else the rows would land in one server's table, unreplicated and unsharded: refused, so
/// they wait in the WAL and the error says why), a stored one without (a Distributed table
/// is written to without waiting for the shards: warned).
fn check_topology(
    config: &ClickHouseConfig,
    engines: &[TableEngine],
) -> Result<(), ClickHouseError> {
    let Some(readings) = engines.iter().find(|t| t.name == "readings") else {
        return Ok(());
    };
    let distributed = readings.engine == "Distributed";
    match config.topology() {
        Topology::Cluster(cluster) if !distributed => Err(ClickHouseError {
            action: "checking the tables against clickhouse.cluster",
            source: clickhouse::error::Error::Custom(format!(
                "clickhouse.cluster is {cluster:?} but {}.readings is a {} made for a single server, not a Distributed table: \
                 rename the single-server tables (or use another clickhouse.database) and run `meterflow schema --apply`",
                config.database, readings.engine
            )),
        }),
        Topology::Single if distributed => {
            tracing::warn!(database = %config.database, "readings is a Distributed table but clickhouse.cluster is not set: inserts are confirmed before the shards have them; set clickhouse.cluster");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The queries [`table_layout`] reads the layout with: `(table, name, type)` of the columns
/// it needs from `system.columns`, and `(name, engine)` of the tables from `system.tables`.
#[doc(hidden)]
pub fn layout_queries(db: &str) -> [String; 2] {
    [
        format!(
            "SELECT table, name, type FROM system.columns WHERE database = '{db}' \
             AND (table = 'readings' OR (table IN ('device_status', 'dead_letters', 'events') \
             AND name IN ('at', 'received_at', 'lsn', 'ts')))"
        ),
        format!(
            "SELECT name, engine FROM system.tables WHERE database = '{db}' \
             AND name IN ('readings', 'device_status', 'dead_letters', \
             'device_status_local', 'dead_letters_local')"
        ),
    ]
}

/// Reads the [`TableLayout`] from `system.columns` and `system.tables`.
pub async fn table_layout(config: &ClickHouseConfig) -> Result<TableLayout, ClickHouseError> {
    let client = config.client()?;
    let [columns_sql, engines_sql] = layout_queries(&config.database);
    let columns = client
        .query(&columns_sql)
        .fetch_all::<ColumnType>()
        .await
        .map_err(|source| ClickHouseError {
            action: "reading the column types of the tables",
            source,
        })?;
    let engines = client
        .query(&engines_sql)
        .fetch_all::<TableEngine>()
        .await
        .map_err(|source| ClickHouseError {
            action: "reading the engines of the tables",
            source,
        })?;
    layout_from(
        config,
        columns
            .into_iter()
            .map(|c| (c.table, c.name, c.kind))
            .collect(),
        engines.into_iter().map(|t| (t.name, t.engine)).collect(),
    )
}

/// The [`TableLayout`] from the rows of [`layout_queries`]: `(table, name, type)` and
/// `(name, engine)`.
#[doc(hidden)]
pub fn layout_from(
    config: &ClickHouseConfig,
    columns: Vec<(String, String, String)>,
    engines: Vec<(String, String)>,
) -> Result<TableLayout, ClickHouseError> {
    let db = &config.database;
    let columns: Vec<ColumnType> = columns
        .into_iter()
        .map(|(table, name, kind)| ColumnType { table, name, kind })
        .collect();
    let engines: Vec<TableEngine> = engines
        .into_iter()
        .map(|(name, engine)| TableEngine { name, engine })
        .collect();
    check_topology(config, &engines)?;
    let times = |table: &str, name: &str| {
        let millis = columns
            .iter()
            .any(|c| c.table == table && c.name == name && c.kind.starts_with("DateTime64"));
        if millis {
            TimeColumns::Millis
        } else {
            TimeColumns::Seconds
        }
    };
    let has_lsn = |table: &str| columns.iter().any(|c| c.table == table && c.name == "lsn");
    // On a cluster the rows are in each shard's `_local` table, behind the Distributed one.
    let replacing = |table: &str| {
        let stored = match config.topology() {
            Topology::Single => table.to_string(),
            Topology::Cluster(_) => format!("{table}_local"),
        };
        engines
            .iter()
            .any(|t| t.name == stored && t.engine.ends_with("ReplacingMergeTree"))
    };
    let readings = columns
        .iter()
        .filter(|c| c.table == "readings")
        .map(|c| (c.name.as_str(), c.kind.as_str()));
    let readings_native = match ReadingsNative::from_server_columns(readings) {
        Ok(native) => Some(Arc::new(native)),
        Err(why) => {
            tracing::warn!(database = %db, why = why.to_string(), "readings has a column type the Native encoder does not write; inserting RowBinary");
            None
        }
    };
    let layout = TableLayout {
        readings_native,
        times: times("readings", "ts"),
        status_times: times("device_status", "at"),
        dead_letter_times: times("dead_letters", "received_at"),
        event_times: times("events", "ts"),
        status_lsn: has_lsn("device_status"),
        status_ts: columns
            .iter()
            .any(|c| c.table == "device_status" && c.name == "ts"),
        dead_letter_lsn: has_lsn("dead_letters"),
    };
    let idempotent = layout.status_lsn
        && replacing("device_status")
        && layout.dead_letter_lsn
        && replacing("dead_letters");
    if !idempotent {
        tracing::warn!(
            database = %db,
            "device_status or dead_letters was made by an earlier meterflow (not a ReplacingMergeTree keyed by lsn): an insert retried after a timeout may be stored twice there. To make retries harmless, rename the table, run `meterflow schema --apply` and copy the rows over with a unique lsn (see docs/ARCHITECTURE.md)"
        );
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_column_that_exists_already_is_done() {
        let error = |text: &str| super::ClickHouseError {
            action: "adding",
            source: clickhouse::error::Error::BadResponse(text.into()),
        };
        // 18.16's answer, alone and as the DDL worker passes on a node's.
        let single = "Code: 44, e.displayText() = DB::Exception: Cannot add column ts: column \
                      with this name already exists, e.what() = DB::Exception";
        assert!(super::is_duplicate_column(&error(single)));
        assert!(super::is_duplicate_column(&error(&format!(
            "Code: 44, e.displayText() = DB::Exception: There was an error on [ch2:9000]: {single}"
        ))));
        assert!(super::is_duplicate_column(&error(
            "Code: 15. DB::Exception: Column ts already exists"
        )));
        assert!(!super::is_duplicate_column(&error(
            "Code: 44. DB::Exception: Sorting key cannot contain nullable columns"
        )));
        assert!(!super::is_duplicate_column(&error(
            "Code: 60. Table doesn't exist"
        )));
        // 18.16's answer when a server of the cluster has not run it yet (CI, 2026-12-07).
        let waiting = "Code: 159, e.displayText() = DB::Exception: Watching task \
                       /clickhouse/task_queue/ddl/query-0000000022 is executing longer than \
                       distributed_ddl_task_timeout (=180) seconds. There are 1 unfinished \
                       hosts (1 of them are currently active), they are going to execute the \
                       query in background";
        let on_cluster = "ALTER TABLE m.meters_local ON CLUSTER c ADD COLUMN x UInt32";
        assert!(super::still_running_on_cluster(&error(waiting), on_cluster));
        assert!(!super::still_running_on_cluster(
            &error(waiting),
            "ALTER TABLE m.meters ADD COLUMN x UInt32"
        ));
        assert!(!super::still_running_on_cluster(
            &error("Code: 60. Table doesn't exist"),
            on_cluster
        ));
    }

    use super::*;

    #[test]
    fn a_cluster_config_refuses_single_server_tables() {
        let engines = |readings: &str| {
            vec![TableEngine {
                name: "readings".into(),
                engine: readings.into(),
            }]
        };
        let cluster = ClickHouseConfig {
            cluster: "meterflow".into(),
            ..ClickHouseConfig::default()
        };
        let e = check_topology(&cluster, &engines("ReplacingMergeTree")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("clickhouse.cluster") && text.contains("ReplacingMergeTree"),
            "{text}"
        );
        // Not the rows' fault, and not to be dead-lettered: the writer retries the layout
        // whatever failed, so the rows wait in the WAL.
        assert!(!e.is_retryable());
        check_topology(&cluster, &engines("Distributed")).unwrap();
        let single = ClickHouseConfig::default();
        check_topology(&single, &engines("ReplacingMergeTree")).unwrap();
        // A single-server config on a cluster's tables works, with a warning.
        check_topology(&single, &engines("Distributed")).unwrap();
        // No tables yet: nothing to check.
        check_topology(&cluster, &[]).unwrap();
    }

    #[test]
    fn versions_parse_and_decide_the_types() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("25.3.2.39").unwrap();
        assert!(!old.is_modern());
        assert!(new.is_modern());
        let old_ddl = schema_ddl("mf", old, 30, Topology::Single).join("\n");
        assert!(old_ddl.contains("ts DateTime,"));
        assert!(
            !old_ddl.contains("LowCardinality")
                && !old_ddl.contains("CODEC")
                && !old_ddl.contains("TTL")
        );
        let new_ddl = schema_ddl("mf", new, 30, Topology::Single).join("\n");
        assert!(new_ddl.contains("ts DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1))"));
        assert!(new_ddl.contains("channel LowCardinality(String)"));
        assert!(new_ddl.contains("TTL toDateTime(ts) + INTERVAL 30 DAY"));
        assert!(new_ddl.contains("ENGINE = ReplacingMergeTree(received_at)"));
        assert!(new_ddl.contains("ORDER BY (meter_id, channel, ts)"));
    }

    #[test]
    fn a_cluster_gets_replicated_local_tables_behind_distributed_ones() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let ddl = schema_ddl("mf", old, 0, Topology::Cluster("meterflow"));
        let find = |start: &str| {
            ddl.iter()
                .find(|s| s.starts_with(start))
                .unwrap_or_else(|| panic!("no {start}: {ddl:#?}"))
        };
        assert_eq!(
            find("CREATE DATABASE"),
            "CREATE DATABASE IF NOT EXISTS mf ON CLUSTER meterflow"
        );
        assert!(find("CREATE TABLE IF NOT EXISTS mf.readings_local ON CLUSTER meterflow (").contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/mf/readings_local', '{replica}', received_at)"
        ));
        assert_eq!(
            find("CREATE TABLE IF NOT EXISTS mf.readings ON CLUSTER"),
            "CREATE TABLE IF NOT EXISTS mf.readings ON CLUSTER meterflow AS mf.readings_local\nENGINE = Distributed(meterflow, mf, readings_local, cityHash64(meter_id))"
        );
        let hourly = find(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS mf.readings_hourly_local ON CLUSTER meterflow",
        );
        assert!(hourly.contains("ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/mf/readings_hourly_local', '{replica}')"));
        assert!(hourly.contains("FROM mf.readings_local"));
        assert!(find("CREATE TABLE IF NOT EXISTS mf.device_status_local").contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/mf/device_status_local', '{replica}')"
        ));
        assert!(
            find("CREATE TABLE IF NOT EXISTS mf.dead_letters ON CLUSTER")
                .contains("cityHash64(meter_id, lsn)")
        );
        // Every object: 1 database, 8 tables x 2 (events, meters, readings_vee, vee_runs and
        // vee_exceptions among them), 2 rollups x 2.
        assert_eq!(ddl.len(), 21);
        assert_eq!(super::CLUSTER_OBJECTS.len(), 20);
        assert!(find("CREATE TABLE IF NOT EXISTS mf.events_local").contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/mf/events_local', '{replica}')"
        ));
        assert!(find("CREATE TABLE IF NOT EXISTS mf.readings_vee_local").contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/mf/readings_vee_local', '{replica}', version)"
        ));
    }
}
