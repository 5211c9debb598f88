//! A current ClickHouse beside the 18.16 of the other tests: chdb (ClickHouse 26.x as a
//! library, from PyPI; the test command installs it) driven by `clickhouse_current.py`. It
//! runs the schema's DDL for a current server (every single-server statement; the cluster's
//! parsed with `EXPLAIN AST`, since `ON CLUSTER` needs ZooKeeper and remote servers), the
//! writer's Native and RowBinary insert bodies (the bytes meterflow sends, loaded with the
//! writer's own INSERT statement as `... FROM INFILE ... FORMAT`), every query of
//! `storage/sql/` as meterflow fills it, and the read model's queries behind `query
//! anomalies` and `query devices` (answers compared with the Parquet tree's); the rows and
//! answers are checked against values computed here. And an answer compressed by ClickHouse
//! 26.x's own LZ4 writer, as servers from 25.10 on send it to `Accept-Encoding: lz4`, read
//! back by `meterflow query`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use arrow_array::RecordBatch;
use base64::Engine;
use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};
use meterflow_storage::analytics::{self, Table};
use meterflow_storage::clickhouse::schema::{layout_from, layout_queries};
use meterflow_storage::clickhouse::writer::insert_requests;
use meterflow_storage::clickhouse::{
    schema_ddl, ClickHouseConfig, DeadLetterRow, ServerVersion, SideRows, StatusRow, TableLayout,
    TimeColumns, Topology,
};
use meterflow_storage::events::EventRow;
use meterflow_storage::questions::{self, AnomalyQuestion, AnomalyRules, FALL_LOOK_BACK_MS};
use meterflow_storage::readings::clickhouse::{read_sql, series_from_answers};
use meterflow_storage::readings::summary::{self, SummaryRequest};
use meterflow_storage::readings::{self, Channels, Neighbours, ReadRequest};
use meterflow_storage::status::{self, status_batch, StatusRequest, StatusView};
use meterflow_storage::{ParquetConfig, ParquetSink, StorageError};

use crate::harness::{free_port, BIN};

/// chdb in a Python process of its own, one JSON line each way.
pub(crate) struct Chdb {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    version: ServerVersion,
    dir: tempfile::TempDir,
}

impl Chdb {
    pub(crate) fn start() -> Chdb {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/clickhouse_current.py"
            ))
            .arg(dir.path().join("session"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (the test command installs chdb)");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut hello = String::new();
        stdout.read_line(&mut hello).unwrap();
        let hello: serde_json::Value = serde_json::from_str(&hello)
            .unwrap_or_else(|e| panic!("clickhouse_current.py: {e}: {hello:?}"));
        assert_eq!(hello["ok"], true, "{hello}");
        let text = hello["version"].as_str().unwrap();
        eprintln!("chdb {} = ClickHouse {text}", hello["chdb"]);
        let version = ServerVersion::parse(text).unwrap();
        Chdb {
            child,
            stdin,
            stdout,
            version,
            dir,
        }
    }

    /// The answer in `format`, or the engine's error.
    pub(crate) fn run(&mut self, sql: &str, format: &str) -> Result<Vec<u8>, String> {
        let request = serde_json::json!({"sql": sql, "format": format});
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        if answer["ok"] == true {
            Ok(base64::engine::general_purpose::STANDARD
                .decode(answer["out"].as_str().unwrap())
                .unwrap())
        } else {
            Err(answer["error"].as_str().unwrap_or_default().to_string())
        }
    }

    pub(crate) fn ok(&mut self, sql: &str) -> String {
        let out = self
            .run(sql, "TabSeparatedWithNames")
            .unwrap_or_else(|e| panic!("{e}\n-- in --\n{sql}"));
        String::from_utf8(out).unwrap()
    }

    /// The answer as meterflow reads it.
    fn table(&mut self, sql: &str) -> Table {
        Table::from_tsv(&self.ok(sql))
    }

    /// The rows of the answer, unescaped (`DateTime64(3, 'UTC')` comes as `\'UTC\'`).
    fn rows(&mut self, sql: &str) -> Vec<Vec<String>> {
        self.table(sql).rows
    }

    /// The schema of a current server for `config` (single server): every statement runs.
    pub(crate) fn apply_schema(&mut self, config: &ClickHouseConfig) {
        for statement in schema_ddl(
            &config.database,
            self.version,
            config.ttl_days,
            Topology::Single,
        ) {
            self.ok(&statement);
        }
    }

    /// The layout of `config`'s tables, read with the writer's queries and code.
    fn layout(&mut self, config: &ClickHouseConfig) -> TableLayout {
        let [columns, engines] = layout_queries(&config.database);
        let columns = self
            .rows(&columns)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
            .collect();
        let engines = self
            .rows(&engines)
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        layout_from(config, columns, engines).unwrap()
    }

    /// What the writer sends for `side` and `batches`, each INSERT with its body from a file.
    fn insert(
        &mut self,
        config: &ClickHouseConfig,
        layout: &TableLayout,
        side: &SideRows,
        batches: &[RecordBatch],
        rowbinary: bool,
    ) -> Vec<String> {
        let requests = insert_requests(config, layout, side, batches, rowbinary).unwrap();
        let mut statements = Vec::new();
        for (i, (sql, body)) in requests.into_iter().enumerate() {
            let path = self
                .dir
                .path()
                .join(format!("body-{}-{i}", statements.len()));
            std::fs::write(&path, &body).unwrap();
            let (insert, format) = sql.rsplit_once(" FORMAT ").unwrap();
            self.ok(&format!(
                "{insert} FROM INFILE '{}' FORMAT {format}",
                path.display()
            ));
            statements.push(sql);
        }
        statements
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        drop(self.stdin.take()); // its end of input: the script closes the session and exits
        let _ = self.child.wait();
    }
}

/// 2024-03-01T00:00:00Z in ms.
const T0: i64 = 1_709_251_200_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// One reading: meter, channel, ts (ms), value, unit, received_at (ms), quality.
#[derive(Debug, Clone, PartialEq)]
struct R {
    meter: String,
    channel: String,
    ts: i64,
    value: f64,
    unit: String,
    received: i64,
    quality: u16,
}

fn r(meter: &str, channel: &str, ts: i64, value: f64, unit: &str, received: i64) -> R {
    R {
        meter: meter.into(),
        channel: channel.into(),
        ts,
        value,
        unit: unit.into(),
        received,
        quality: 0,
    }
}

/// The known data (as tests/it/analytics.rs has it on 18.16): A clean, B a reverse run and a
/// reset, C standing still, D a quarter-hour series with a spike and a gap, E not heard for
/// two days; one of A's readings delivered twice.
fn dataset(now: i64) -> Vec<R> {
    let h = HOUR;
    let mut rows = vec![
        r("A", "1-0:1.8.1", T0, 100.0, "kWh", now),
        r("A", "1-0:1.8.1", T0 + 6 * h, 100.5, "kWh", now),
        r("A", "1-0:1.8.1", T0 + 12 * h, 101.25, "kWh", now),
        r("A", "1-0:1.8.1", T0 + 18 * h, 102.0, "kWh", now),
        r("A", "1-0:1.8.2", T0, 50.0, "kWh", now),
        r("A", "1-0:1.8.2", T0 + 12 * h, 50.25, "kWh", now),
        r("A", "1-0:1.8.2", T0 + 18 * h, 51.0, "kWh", now),
        r("A", "1-0:2.8.1", T0, 10.0, "kWh", now),
        r("A", "1-0:2.8.1", T0 + 18 * h, 10.5, "kWh", now),
        r("A", "0-1:24.2.1", T0, 300.0, "m3", now),
        r("A", "0-1:24.2.1", T0 + 18 * h, 300.125, "m3", now),
        // Outside the period.
        r("A", "1-0:1.8.1", T0 + 10 * DAY, 900.0, "kWh", now),
        r("B", "1-0:1.8.1", T0, 1000.0, "kWh", now),
        r("B", "1-0:1.8.1", T0 + h, 1001.0, "kWh", now),
        r("B", "1-0:1.8.1", T0 + 2 * h, 999.0, "kWh", now),
        r("B", "1-0:1.8.1", T0 + 3 * h, 1000.5, "kWh", now),
        r("B", "1-0:1.8.2", T0, 99999.0, "kWh", now),
        r("B", "1-0:1.8.2", T0 + h, 5.0, "kWh", now),
        r("B", "1-0:1.8.2", T0 + 2 * h, 7.0, "kWh", now),
        r("C", "1-0:1.8.1", T0, 500.0, "kWh", now),
        r("C", "1-0:1.8.1", T0 + 2 * DAY, 500.0, "kWh", now),
        r("C", "1-0:1.8.1", T0 + 4 * DAY, 500.0, "kWh", now),
        r("E", "1-0:1.8.1", T0, 1.0, "kWh", now - 2 * DAY),
    ];
    for i in 0..14 {
        if i == 6 || i == 7 {
            continue;
        }
        let v = if i == 10 { 2.0 } else { 0.1 };
        rows.push(r("D", "1-0:1.29.0", T0 + i * 900_000, v, "kWh", now));
    }
    for (i, row) in rows.iter_mut().enumerate() {
        row.quality = (i % 5) as u16;
    }
    // Delivered twice: the same reading, received again a second later.
    let mut again = rows[1].clone();
    again.received += 1000;
    rows.push(again);
    rows
}

fn batch(rows: &[R]) -> RecordBatch {
    let mut b = ReadingBatchBuilder::default();
    for row in rows {
        let meta = RowMeta {
            meter_id: &row.meter,
            received_at_ms: row.received,
            source: Source::Mqtt,
            format: Format::Json,
        };
        b.append(
            &meta,
            &row.channel,
            row.ts,
            row.value,
            &row.unit,
            row.quality,
        );
    }
    b.finish()
}

fn statuses(now: i64) -> Vec<StatusRow> {
    let status = |meter: &str, at_ms: i64, lsn: u64| StatusRow {
        meter_id: meter.into(),
        at_ms,
        source: "mqtt".into(),
        lsn,
        ..StatusRow::default()
    };
    vec![
        StatusRow {
            battery_pct: Some(87),
            rssi_dbm: Some(-71),
            firmware: Some("4.2.17".into()),
            error_flags: Some(0),
            ..status("A", T0, 1)
        },
        StatusRow {
            rssi_dbm: Some(-75),
            rsrp_dbm: Some(-101),
            snr_db: Some(7.5),
            firmware: Some("4.2.18".into()),
            ..status("A", T0 + HOUR, 2)
        },
        // Its own time (the report's readings) half an hour before it was received.
        StatusRow {
            battery_pct: Some(40),
            error_flags: Some(5),
            ts_ms: T0 + 2 * HOUR - 1_800_000,
            ..status("B", T0 + 2 * HOUR, 3)
        },
        // Recent, for the device-state rebuild (the last days only).
        StatusRow {
            battery_pct: Some(77),
            ..status("A", now - HOUR, 4)
        },
    ]
}

fn dead_letter(now: i64) -> DeadLetterRow {
    DeadLetterRow {
        received_at_ms: now,
        source: "mqtt".into(),
        topic: "meters/DL-1/json".into(),
        meter_id: "DL-1".into(),
        format: "json".into(),
        kind: "malformed".into(),
        reason: "expected value at line 1".into(),
        payload: b"{\"readings\": [\xff\xfe".to_vec(),
        lsn: 9,
    }
}

/// The newest value of each channel of `meter` (by the reading's time), deduplicated.
fn newest_values(rows: &[R], meter: &str) -> BTreeMap<String, (i64, f64, String)> {
    let mut newest: BTreeMap<String, (i64, f64, String)> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.meter == meter) {
        let entry = newest
            .entry(row.channel.clone())
            .or_insert((i64::MIN, 0.0, String::new()));
        if row.ts > entry.0 {
            *entry = (row.ts, row.value, row.unit.clone());
        }
    }
    newest
}

fn cell<'a>(table: &'a Table, row: usize, column: &str) -> &'a str {
    table
        .get(row, column)
        .unwrap_or_else(|| panic!("no {column} in row {row} of {table:?}"))
}

fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `query anomalies` from chdb (the read model's SQL run there, its answers parsed as
/// `meterflow query` parses them) and from the Parquet tree under `tree`.
fn anomalies_both(
    ch: &mut Chdb,
    tree: &std::path::Path,
    from: i64,
    to: i64,
    now: i64,
    meter: Option<&str>,
    rules: &AnomalyRules,
) -> [Table; 2] {
    let q = AnomalyQuestion {
        from_ms: from,
        to_ms: to,
        rules,
        now_ms: now,
        time: &utc,
        rollover: &|_, _| None,
    };
    let req = ReadRequest {
        from_ms: from,
        to_ms: to,
        margin_ms: 0,
        meter: meter.map(str::to_string),
        channels: Channels::RegistersAndIntervals,
        neighbours: Neighbours::Before,
        before_since_ms: Some(from - FALL_LOOK_BACK_MS),
        silent_since_ms: None,
    };
    let status_req = StatusRequest {
        meter: meter.map(str::to_string),
        period: Some((from, to)),
        view: StatusView::Flagged,
    };
    let summary_req = SummaryRequest {
        meter: meter.map(str::to_string),
        before_ms: Some(to),
        since_ms: Some(q.stale_since_ms()),
        count: false,
    };
    let sql = read_sql("mf", &req, TimeColumns::Millis).unwrap();
    let window = ch.run(&sql.window, "RowBinary").unwrap();
    let neighbours = ch
        .run(sql.neighbours.as_deref().unwrap_or_default(), "RowBinary")
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let series = runtime
        .block_on(series_from_answers(window, neighbours, Vec::new(), &req))
        .unwrap();
    let mut found = Vec::new();
    for s in &series {
        q.series(s, &mut found);
    }
    let reports =
        status::rows_from_tsv(&ch.ok(&status::clickhouse_sql("mf", &status_req, true).unwrap()))
            .unwrap();
    q.error_flags(&reports, &mut found);
    let summaries =
        summary::from_tsv(&ch.ok(&summary::clickhouse_sql("mf", &summary_req).unwrap())).unwrap();
    q.stale(&summaries, &mut found);
    let from_clickhouse = q.table(found);

    let mut found = Vec::new();
    readings::parquet::read(tree, &req, |s| {
        q.series(&s, &mut found);
        Ok::<_, StorageError>(())
    })
    .unwrap();
    q.error_flags(
        &status::read_parquet(tree, &status_req).unwrap(),
        &mut found,
    );
    q.stale(
        &summary::read_parquet(tree, &summary_req).unwrap(),
        &mut found,
    );
    [from_clickhouse, q.table(found)]
}

/// `query devices` from chdb and from the Parquet tree under `tree`.
fn devices_both(
    ch: &mut Chdb,
    tree: &std::path::Path,
    now: i64,
    meter: Option<&str>,
    stale_s: u64,
) -> [Table; 2] {
    let summary_req = SummaryRequest {
        meter: meter.map(str::to_string),
        before_ms: None,
        since_ms: None,
        count: true,
    };
    let status_req = StatusRequest {
        meter: meter.map(str::to_string),
        period: None,
        view: StatusView::Latest,
    };
    let summaries =
        summary::from_tsv(&ch.ok(&summary::clickhouse_sql("mf", &summary_req).unwrap())).unwrap();
    let reports =
        status::rows_from_tsv(&ch.ok(&status::clickhouse_sql("mf", &status_req, true).unwrap()))
            .unwrap();
    [
        questions::devices(&summaries, &reports, stale_s, now, &utc),
        questions::devices(
            &summary::read_parquet(tree, &summary_req).unwrap(),
            &status::read_parquet(tree, &status_req).unwrap(),
            stale_s,
            now,
            &utc,
        ),
    ]
}

#[test]
fn schema_insert_bodies_and_every_query_run_on_a_current_clickhouse() {
    let mut ch = Chdb::start();
    // The analyzer that refuses unnamed joined subqueries is the default from 24.3 on.
    assert!(
        ch.version
            >= ServerVersion {
                major: 24,
                minor: 3
            },
        "{:?}",
        ch.version
    );
    assert!(ch.version.is_modern());

    // The schema: every statement of a single server runs, with and without a TTL; the
    // cluster's parse.
    let config = ClickHouseConfig {
        database: "mf".into(),
        ..ClickHouseConfig::default()
    };
    ch.apply_schema(&config);
    ch.apply_schema(&ClickHouseConfig {
        database: "mf_ttl".into(),
        ttl_days: 30,
        ..ClickHouseConfig::default()
    });
    let tables = ch.rows(
        "SELECT database, name, engine FROM system.tables WHERE database IN ('mf', 'mf_ttl') \
         AND NOT startsWith(name, '.inner') ORDER BY database, name",
    );
    let want = [
        "dead_letters",
        "device_status",
        "events",
        "meters",
        "readings",
        "readings_daily",
        "readings_hourly",
        "readings_vee",
        "vee_exceptions",
        "vee_runs",
    ];
    for db in ["mf", "mf_ttl"] {
        let names: Vec<&str> = tables
            .iter()
            .filter(|t| t[0] == db)
            .map(|t| t[1].as_str())
            .collect();
        assert_eq!(names, want, "{tables:?}");
    }
    let cluster = schema_ddl("mf_c", ch.version, 30, Topology::Cluster("meterflow"));
    assert_eq!(cluster.len(), 21);
    for statement in &cluster {
        let ast = ch.ok(&format!("EXPLAIN AST {statement}"));
        assert!(ast.contains("Query"), "{statement}: {ast}");
    }

    // The layout as the writer reads it: Native with LowCardinality and DateTime64(3).
    let layout = ch.layout(&config);
    assert!(layout.readings_native.is_some(), "{layout:?}");
    assert_eq!(layout.times, TimeColumns::Millis);
    assert_eq!(layout.status_times, TimeColumns::Millis);
    assert!(layout.status_lsn && layout.status_ts && layout.dead_letter_lsn);
    assert_eq!(ch.ok(&status::has_ts_sql("mf")), "has_ts\n1\n");

    // The writer's bodies: status rows and dead letters as RowBinary, readings as one Native
    // body of two blocks (a merged insert), the rest as RowBinary (its fallback).
    // A minute back: the repeat is received a second after the original, and a reception
    // after the server's now() would count as not heard yet (seconds_since < 0).
    let now = meterflow_proto::now_ms() - 60_000;
    let data = dataset(now);
    let (native_rows, rowbinary_rows) = data.split_at(24);
    let mut side = SideRows::default();
    side.statuses = statuses(now);
    side.dead_letters = vec![dead_letter(now)];
    let event = |meter: &str, ts_ms: i64, kind: &str| EventRow {
        meter_id: meter.into(),
        ts_ms,
        kind: kind.into(),
        severity: "critical".into(),
        source: "mqtt".into(),
        code: "bit 2".into(),
        detail: "a tab\there, a quote ' and a newline\n".into(),
        raw: "error_flags=0x4".into(),
    };
    // The same event twice (a repeated report): one row back.
    side.events = vec![
        event("E1", now + 123, "cover_open"),
        event("E1", now + 123, "cover_open"),
        event("E2", now - 5_000, "forged_publish"),
    ];
    let sent = ch.insert(
        &config,
        &layout,
        &side,
        &[batch(&native_rows[..10]), batch(&native_rows[10..])],
        false,
    );
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(
        sent[0].starts_with("INSERT INTO mf.device_status")
            && sent[0].ends_with("FORMAT RowBinary")
    );
    assert!(
        sent[1].starts_with("INSERT INTO mf.dead_letters") && sent[1].ends_with("FORMAT RowBinary")
    );
    assert!(sent[2].starts_with("INSERT INTO mf.events") && sent[2].ends_with("FORMAT RowBinary"));
    assert!(sent[3].starts_with("INSERT INTO mf.readings") && sent[3].ends_with("FORMAT Native"));
    let events = meterflow_storage::events::rows_from_tsv(
        &ch.ok(&meterflow_storage::events::clickhouse_sql("mf", &Default::default()).unwrap()),
    )
    .unwrap();
    let mut want_events = vec![
        event("E2", now - 5_000, "forged_publish"),
        event("E1", now + 123, "cover_open"),
    ];
    for e in &mut want_events {
        e.ts_ms -= e.ts_ms.rem_euclid(1000);
    }
    assert_eq!(events, want_events);
    let sent = ch.insert(
        &config,
        &layout,
        &SideRows::default(),
        &[batch(rowbinary_rows)],
        true,
    );
    assert!(sent[0].ends_with("FORMAT RowBinary"), "{sent:?}");

    // Every row and value arrived: times to the millisecond, floats to the bit.
    let stored: Vec<R> = ch
        .rows(
            "SELECT meter_id, channel, toUnixTimestamp64Milli(ts), value, unit, \
             toUnixTimestamp64Milli(received_at), quality FROM mf.readings \
             ORDER BY meter_id, channel, ts, received_at",
        )
        .into_iter()
        .map(|c| R {
            meter: c[0].clone(),
            channel: c[1].clone(),
            ts: c[2].parse().unwrap(),
            value: c[3].parse().unwrap(),
            unit: c[4].clone(),
            received: c[5].parse().unwrap(),
            quality: c[6].parse().unwrap(),
        })
        .collect();
    let mut want = data.clone();
    want.sort_by(|a, b| {
        (&a.meter, &a.channel, a.ts, a.received).cmp(&(&b.meter, &b.channel, b.ts, b.received))
    });
    assert_eq!(stored, want);
    let sources = ch.rows("SELECT DISTINCT source, format FROM mf.readings");
    assert_eq!(sources, vec![vec!["mqtt".to_string(), "json".to_string()]]);
    let deduped = ch.rows("SELECT count() FROM mf.readings FINAL");
    assert_eq!(
        deduped[0][0],
        (data.len() - 1).to_string(),
        "the repeat counts once"
    );
    let status_rows = ch.rows(
        "SELECT meter_id, toUnixTimestamp64Milli(at), ifNull(toString(battery_pct), '-'), \
         ifNull(toString(rssi_dbm), '-'), ifNull(toString(rsrp_dbm), '-'), \
         ifNull(toString(snr_db), '-'), ifNull(firmware, '-'), ifNull(toString(error_flags), '-'), \
         source, lsn, toUnixTimestamp64Milli(ts) FROM mf.device_status ORDER BY lsn",
    );
    let text = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let want_status: Vec<Vec<String>> = statuses(now)
        .into_iter()
        .map(|s| {
            vec![
                s.meter_id.clone(),
                s.at_ms.to_string(),
                text(s.battery_pct.map(|v| v.to_string())),
                text(s.rssi_dbm.map(|v| v.to_string())),
                text(s.rsrp_dbm.map(|v| v.to_string())),
                text(s.snr_db.map(|v| v.to_string())),
                text(s.firmware.clone()),
                text(s.error_flags.map(|v| v.to_string())),
                s.source.clone(),
                s.lsn.to_string(),
                s.own_time_ms().to_string(),
            ]
        })
        .collect();
    assert_eq!(status_rows, want_status);
    let letters = ch.rows(
        "SELECT toUnixTimestamp64Milli(received_at), topic, meter_id, kind, reason, hex(payload), lsn \
         FROM mf.dead_letters",
    );
    let letter = dead_letter(now);
    assert_eq!(
        letters,
        vec![vec![
            letter.received_at_ms.to_string(),
            letter.topic,
            letter.meter_id,
            letter.kind,
            letter.reason,
            letter
                .payload
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>(),
            letter.lsn.to_string(),
        ]]
    );
    // The rollups took every reading (their materialized views ran on the inserts).
    let hourly = ch.rows(
        "SELECT sum(samples) FROM (SELECT countMerge(samples) AS samples FROM mf.readings_hourly)",
    );
    assert_eq!(hourly[0][0], data.len().to_string());

    // anomalies and devices: the read model's SQL run here (the series, the status reports,
    // the channels' summaries), the answers parsed as `meterflow query` parses them and given
    // to the same questions; against the same rows in a Parquet tree, and against values
    // computed here.
    let (from, to) = (T0, T0 + 5 * DAY);
    let tree = tempfile::tempdir().unwrap();
    ParquetSink::open_named(tree.path(), ParquetConfig::default(), "all")
        .unwrap()
        .write_named(&batch(&data), "all")
        .unwrap();
    let mut status_files =
        ParquetSink::open_status(tree.path(), ParquetConfig::default(), "").unwrap();
    status_files
        .write(
            &status_batch(&statuses(now)).unwrap(),
            None,
            std::time::Instant::now(),
        )
        .unwrap();
    status_files.close().unwrap();
    let rules = AnomalyRules {
        stale_s: 86_400,
        ..AnomalyRules::default()
    };
    let [anomalies, from_parquet] =
        anomalies_both(&mut ch, tree.path(), from, to, now, None, &rules);
    assert_eq!(anomalies, from_parquet, "the same answer from both sources");
    let kinds: BTreeSet<(String, String, String)> = (0..anomalies.rows.len())
        .map(|i| {
            (
                cell(&anomalies, i, "meter_id").into(),
                cell(&anomalies, i, "channel").into(),
                cell(&anomalies, i, "kind").into(),
            )
        })
        .collect();
    let mut want: BTreeSet<(String, String, String)> = [
        ("B", "", "error_flags"),
        ("B", "1-0:1.8.1", "reverse_run"),
        ("B", "1-0:1.8.2", "register_reset"),
        ("C", "1-0:1.8.1", "zero_consumption"),
        ("D", "1-0:1.29.0", "missing_intervals"),
        ("D", "1-0:1.29.0", "spike"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    // Stale: no reading (by its own time) in the day before the period's end.
    let meters: BTreeSet<&str> = data.iter().map(|r| r.meter.as_str()).collect();
    for meter in &meters {
        let newest = data
            .iter()
            .filter(|r| r.meter == *meter && r.ts < to)
            .map(|r| r.ts)
            .max()
            .unwrap();
        if to - newest >= DAY {
            want.insert((meter.to_string(), String::new(), "stale".into()));
        }
    }
    assert!(
        want.contains(&("C".into(), String::new(), "stale".into())),
        "exactly a day"
    );
    assert_eq!(kinds, want, "{anomalies:#?}");
    assert_eq!(anomalies.rows.len(), want.len(), "{anomalies:#?}");
    // D's gap: the largest step between its times, in quarter hours, less one.
    let mut d_times: Vec<i64> = data
        .iter()
        .filter(|r| r.meter == "D")
        .map(|r| r.ts)
        .collect();
    d_times.sort_unstable();
    let gap = d_times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    let missing = (0..anomalies.rows.len())
        .find(|&i| cell(&anomalies, i, "kind") == "missing_intervals")
        .unwrap();
    assert!(
        cell(&anomalies, missing, "detail")
            .starts_with(&format!("{} quarter-hour", gap / 900_000 - 1)),
        "{anomalies:#?}"
    );
    let flags = (0..anomalies.rows.len())
        .find(|&i| cell(&anomalies, i, "kind") == "error_flags")
        .unwrap();
    assert_eq!(
        cell(&anomalies, flags, "at"),
        utc(T0 + 2 * HOUR - 1_800_000),
        "the report's own time"
    );
    let [b, b_parquet] = anomalies_both(&mut ch, tree.path(), from, to, now, Some("B"), &rules);
    assert_eq!(b, b_parquet);
    assert_eq!(b.rows.len(), 4, "{b:#?}");

    // devices, as `meterflow query devices [--meter A] [--stale-after 1d]`.
    let [devices, from_parquet] = devices_both(&mut ch, tree.path(), now, None, 0);
    assert_eq!(devices, from_parquet, "the same answer from both sources");
    assert_eq!(devices.rows.len(), meters.len(), "{devices:#?}");
    for (i, meter) in meters.iter().enumerate() {
        assert_eq!(cell(&devices, i, "meter_id"), *meter);
        let distinct: BTreeSet<(&str, i64)> = data
            .iter()
            .filter(|r| r.meter == *meter)
            .map(|r| (r.channel.as_str(), r.ts))
            .collect();
        assert_eq!(
            cell(&devices, i, "readings"),
            distinct.len().to_string(),
            "{meter}"
        );
        let last_values = cell(&devices, i, "last_values");
        for (channel, (_, value, unit)) in newest_values(&data, meter) {
            assert!(
                last_values.contains(&format!("{channel}={value} {unit} @ ")),
                "{meter}: {last_values}"
            );
        }
    }
    let [a, _] = devices_both(&mut ch, tree.path(), now, Some("A"), 0);
    assert_eq!(a.rows.len(), 1);
    // Each field the newest report that carried it.
    assert_eq!(cell(&a, 0, "battery_pct"), "77");
    assert_eq!(cell(&a, 0, "rssi_dbm"), "-75");
    assert_eq!(cell(&a, 0, "rsrp_dbm"), "-101");
    assert_eq!(cell(&a, 0, "firmware"), "4.2.18");
    assert_eq!(cell(&a, 0, "error_flags"), "0");
    let [c, _] = devices_both(&mut ch, tree.path(), now, Some("C"), 0);
    assert_eq!(cell(&c, 0, "battery_pct"), "", "no status: an empty cell");
    let [stale, stale_parquet] = devices_both(&mut ch, tree.path(), now, None, 86_400);
    assert_eq!(stale, stale_parquet);
    assert_eq!(stale.rows.len(), 1);
    assert_eq!(cell(&stale, 0, "meter_id"), "E");

    // The device-state rebuild of `serve` (device_state.sql), as it reads the answer.
    let snapshots = analytics::snapshots_from_tsv(
        &ch.ok(&analytics::device_state_sql("mf", 7, None, TimeColumns::Millis).unwrap()),
    );
    assert_eq!(
        snapshots
            .iter()
            .map(|s| s.meter_id.as_str())
            .collect::<Vec<_>>(),
        meters.iter().copied().collect::<Vec<_>>()
    );
    for snap in &snapshots {
        let mine: Vec<&R> = data.iter().filter(|r| r.meter == snap.meter_id).collect();
        assert_eq!(snap.rows, mine.len() as u64, "{snap:?}");
        let newest = newest_values(&data, &snap.meter_id);
        assert_eq!(snap.last_values.len(), newest.len(), "{snap:?}");
        for (channel, value) in &snap.last_values {
            let (ts, v, unit) = &newest[channel];
            assert_eq!((value.ts_ms, value.value, &value.unit), (*ts, *v, unit));
        }
        // First heard: the oldest reading or status report received in the window.
        let status_at = statuses(now)
            .into_iter()
            .filter(|s| s.meter_id == snap.meter_id && s.at_ms >= now - 7 * DAY)
            .map(|s| s.at_ms);
        let first = mine.iter().map(|r| r.received).chain(status_at).min();
        assert_eq!(Some(snap.first_seen_ms), first, "{snap:?}");
    }
    let a = &snapshots[0];
    assert_eq!(
        (a.battery_pct, a.status_at_ms),
        (Some(77), Some(now - HOUR))
    );
    assert_eq!(a.rssi_dbm, None, "only the recent report is read");
    let one = analytics::device_state_sql("mf", 7, Some("B"), TimeColumns::Millis).unwrap();
    assert_eq!(analytics::snapshots_from_tsv(&ch.ok(&one)).len(), 1);

    // The page's recent readings of a meter another node took (recent_readings).
    let recent =
        ch.table(&analytics::recent_readings_sql("mf", "A", 2, 7, TimeColumns::Millis).unwrap());
    let mut want: Vec<(String, i64, f64)> = Vec::new();
    let channels: BTreeSet<&str> = data
        .iter()
        .filter(|r| r.meter == "A")
        .map(|r| r.channel.as_str())
        .collect();
    for channel in channels {
        let points: BTreeMap<i64, f64> = data
            .iter()
            .filter(|r| r.meter == "A" && r.channel == channel)
            .map(|r| (r.ts, r.value))
            .collect();
        want.extend(
            points
                .iter()
                .rev()
                .take(2)
                .map(|(ts, v)| (channel.to_string(), *ts, *v)),
        );
    }
    let mut got: Vec<(String, i64, f64)> = (0..recent.rows.len())
        .map(|i| {
            (
                cell(&recent, i, "channel").to_string(),
                cell(&recent, i, "ts_ms").parse().unwrap(),
                cell(&recent, i, "value").parse().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(got, want);
}

/// HTTP answers to requests in turn, one connection each, as a server would send them:
/// `(head, body)`; what each request's headers and body (the query) were comes back on the
/// channel.
fn answer_each(
    listener: std::net::TcpListener,
    answers: Vec<(String, Vec<u8>)>,
) -> std::sync::mpsc::Receiver<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (head, body) in answers {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then the body they announce (the query).
            let headers_end = loop {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "request cut off");
                request.extend_from_slice(&buf[..n]);
                if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let headers = String::from_utf8_lossy(&request[..headers_end]).to_lowercase();
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while request.len() < headers_end + length {
                let n = socket.read(&mut buf).unwrap();
                assert!(n > 0, "request body cut off");
                request.extend_from_slice(&buf[..n]);
            }
            let query = String::from_utf8_lossy(&request[headers_end..]).into_owned();
            socket.write_all(head.as_bytes()).unwrap();
            socket.write_all(&body).unwrap();
            socket.flush().unwrap();
            let _ = tx.send((headers, query));
        }
    });
    rx
}

/// Servers from 25.10 on compress HTTP answers when the client asks (`enable_http_compression`
/// is on by default there): `meterflow query` asks for lz4 and reads such an answer. chdb has
/// no HTTP server, so the answer's body is made by ClickHouse 26.x's own LZ4 writer (the one
/// its HTTP server wraps an answer in for `Accept-Encoding: lz4`) and served here with the
/// headers a server sends; 18.16, which ignores the header, is what the other tests read.
#[test]
fn a_query_answer_compressed_by_a_current_clickhouse_reads_back() {
    let mut ch = Chdb::start();
    let config = ClickHouseConfig {
        database: "mf".into(),
        ..ClickHouseConfig::default()
    };
    ch.apply_schema(&config);
    let layout = ch.layout(&config);
    // 3000 meters x 4 channels: an answer of several hundred KB, several LZ4 blocks.
    let now = meterflow_proto::now_ms() - 60_000;
    let rows: Vec<R> = (0..3000)
        .flat_map(|m| {
            (1..=4).map(move |c| R {
                meter: format!("meter-{m:05}"),
                channel: format!("1-0:1.8.{c}"),
                ts: T0 + m * 1000,
                value: m as f64 * 0.25 + c as f64,
                unit: "kWh".into(),
                received: now,
                quality: 0,
            })
        })
        .collect();
    ch.insert(
        &config,
        &layout,
        &SideRows::default(),
        &[batch(&rows)],
        false,
    );
    // `query devices` asks three questions: the channels' summaries (the big answer, served
    // compressed), whether device_status has `ts`, and the status reports (none here).
    let devices_summary = SummaryRequest {
        count: true,
        ..SummaryRequest::default()
    };
    let sql = summary::clickhouse_sql("mf", &devices_summary).unwrap();
    let plain = ch.ok(&sql);
    let summaries = summary::from_tsv(&plain).unwrap();
    assert_eq!(summaries.len(), 12_000);
    let lz4 = ch.dir.path().join("answer.lz4");
    ch.ok(&format!(
        "{} INTO OUTFILE '{}' COMPRESSION 'lz4' LEVEL 3 FORMAT TabSeparatedWithNames",
        sql.trim_end(),
        lz4.display()
    ));
    let body = std::fs::read(&lz4).unwrap();
    assert_eq!(&body[..4], &[0x04, 0x22, 0x4D, 0x18], "an LZ4 frame");
    assert!(
        body.len() > 64 * 1024,
        "several blocks: {} bytes",
        body.len()
    );
    let latest = StatusRequest {
        view: StatusView::Latest,
        ..StatusRequest::default()
    };
    let no_status = ch
        .ok(&status::clickhouse_sql("mf", &latest, true).unwrap())
        .into_bytes();

    let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let head = |encoding: &str, length: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/tab-separated-values; charset=UTF-8\r\n\
             {encoding}X-ClickHouse-Format: TabSeparatedWithNames\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    };
    let requests = answer_each(
        listener,
        vec![
            (head("Content-Encoding: lz4\r\n", body.len()), body),
            (head("", 9), b"has_ts\n1\n".to_vec()),
            (head("", no_status.len()), no_status),
        ],
    );
    let utc = meterflow_billing::Zone::parse("UTC", "tz").unwrap();
    let out = Command::new(BIN)
        .args([
            "query",
            "--clickhouse-url",
            &url,
            "devices",
            "--format",
            "json",
            "--now",
            &utc.format(now + 5_000),
        ])
        .env("METERFLOW_CLICKHOUSE_URL", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (headers, query) = requests.recv().unwrap();
    assert!(headers.contains("accept-encoding: lz4"), "{headers}");
    assert!(query.contains("uniqExact(ts)"), "{query}");
    let (_, query) = requests.recv().unwrap();
    assert!(query.contains("system.columns"), "{query}");
    let (_, query) = requests.recv().unwrap();
    assert!(query.contains("FROM meterflow.device_status"), "{query}");
    let want = questions::devices(&summaries, &[], 0, now + 5_000, &|ms| utc.format(ms));
    assert_eq!(want.rows.len(), 3000);
    assert_eq!(want.rows[0][2], "5", "seconds since, from --now");

    let got: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got.len(), want.rows.len());
    assert_eq!(got[0]["seconds_since"], 5, "a number");
    for (i, row) in got.iter().enumerate() {
        for (c, name) in want.columns.iter().enumerate() {
            // Numbers are JSON numbers, nothing is null.
            let text = match &row[name] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => String::new(),
                other => panic!("row {i} {name}: {other}"),
            };
            assert_eq!(text, want.rows[i][c], "row {i} {name}");
        }
    }
}

/// VEE's statements on a current server: a version, a run and its exceptions inserted as
/// meterflow sends them (DateTime64 from Unix ms) and read back with its queries, value for
/// value; and the dashboard's "VEE exceptions per day and rule" panel, as on 18.16.
#[test]
fn vee_statements_run_on_a_current_clickhouse() {
    use meterflow_storage::vee::{runs, versions, StoredException, VeeRun, VeeValue};
    let mut ch = Chdb::start();
    let config = ClickHouseConfig {
        database: "mf_vee".into(),
        ..ClickHouseConfig::default()
    };
    ch.apply_schema(&config);
    let day = 1_774_915_200_000i64; // 2026-03-31T00:00:00Z
    let value = |ts: i64, v: f64, quality: &str, version: i64| VeeValue {
        meter_id: "M'1".into(),
        channel: "1-0:1.8.0".into(),
        ts_ms: ts,
        value: v,
        unit: "kWh".into(),
        quality: quality.into(),
        rule: "gap".into(),
        method: "linear".into(),
        version,
        vee_run: format!("2026-04-01T02:00:00.000Z {{\"zero_days\":3}} v{version}"),
    };
    // Values are read only for runs that finished: rows for runs 10 and 20.
    for run_id in [10, 20] {
        ch.ok(&format!(
            "INSERT INTO mf_vee.vee_runs (run_id, period_from, period_to, timezone, meter, trigger, parameters, meters, exceptions, mended, version_written) \
             VALUES ({run_id}, fromUnixTimestamp64Milli(toInt64({day}), 'UTC'), fromUnixTimestamp64Milli(toInt64({}), 'UTC'), 'UTC', '', 'command', '{{}}', 1, 0, 0, 1)",
            day + 86_400_000
        ));
    }
    let first = vec![
        value(day + 900_000, 1.25, "E", 10),
        value(day + 1_800_000, 1.5, "E", 10),
    ];
    let second = vec![value(day + 900_000, 1.3, "A", 20)];
    for values in [&first, &second] {
        for sql in versions::insert_sql("mf_vee", TimeColumns::Millis, values) {
            ch.ok(&sql);
        }
    }
    let sql =
        versions::latest_sql("mf_vee", TimeColumns::Millis, day, day + 86_400_000, None).unwrap();
    let latest = versions::latest_from(&ch.table(&sql)).unwrap();
    assert_eq!(latest, vec![second[0].clone(), first[1].clone()]);

    let run = VeeRun {
        run_id: 30,
        from_ms: day,
        to_ms: day + 86_400_000,
        timezone: "Europe/Berlin".into(),
        meter: String::new(),
        trigger: "schedule".into(),
        parameters: "{\"zero_days\":3}".into(),
        meters: 2,
        exceptions: 1,
        mended: 1,
        version_written: true,
    };
    let found = vec![StoredException {
        run_id: 30,
        day: chrono::NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
        meter_id: "M'1".into(),
        channel: "1-0:1.8.0".into(),
        rule: "gap".into(),
        from_ms: day + 900_000,
        to_ms: day + 1_800_000,
        detail: "2 read(s) missing; \\ and \t kept".into(),
        estimated: true,
        mended: 2,
        method: "linear".into(),
    }];
    for sql in runs::insert_sql("mf_vee", TimeColumns::Millis, &run, &found) {
        ch.ok(&sql);
    }
    let stored_runs =
        runs::runs_from(&ch.table(&runs::runs_sql("mf_vee", TimeColumns::Millis))).unwrap();
    assert_eq!(stored_runs.len(), 3);
    assert_eq!(stored_runs[2], run);
    let sql = runs::exceptions_sql(
        "mf_vee",
        TimeColumns::Millis,
        day,
        day + 86_400_000,
        Some("M'1"),
    )
    .unwrap_err();
    assert!(sql.to_string().contains("not a meter id"), "{sql}");
    let sql =
        runs::exceptions_sql("mf_vee", TimeColumns::Millis, day, day + 86_400_000, None).unwrap();
    assert_eq!(runs::exceptions_from(&ch.table(&sql)).unwrap(), found);

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/meterflow.json")).unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("VEE exceptions per day")
        })
        .unwrap();
    let sql = panel["targets"][0]["rawSql"]
        .as_str()
        .unwrap()
        .replace("meterflow.", "mf_vee.")
        .replace(
            "$__fromTime",
            "toDateTime64('2026-03-30 00:00:00', 3, 'UTC')",
        )
        .replace("$__toTime", "toDateTime64('2026-04-02 00:00:00', 3, 'UTC')");
    assert_eq!(
        ch.rows(&sql),
        vec![vec!["2026-03-31".to_string(), "gap".into(), "1".into()]]
    );
}

/// The registry's statements on a current ClickHouse: an import written and the newest read
/// back equal to what was imported (a quote, an empty interval, open validity).
#[test]
fn the_registry_round_trips_on_a_current_clickhouse() {
    use meterflow_storage::registry::Registry;
    let mut ch = Chdb::start();
    let config = ClickHouseConfig {
        database: "mf_reg".into(),
        ..ClickHouseConfig::default()
    };
    ch.apply_schema(&config);
    let zone = meterflow_billing::Zone::parse("Asia/Bishkek", "tz").unwrap();
    let registry = Registry::from_csv(
        b"meter_id,kind,model,expected_interval_s,feeder,role,import_only,tariff,valid_from,valid_to,report_interval_s\n\
          E1,electricity,CE308,900,F-12,customer,yes,o'clock,2025-01-01,2025-07-01,86400\n\
          E1,electricity,CE308,900,F-14,customer,yes,,2025-07-01,,\n\
          G1,gas,,,F-12,customer,no,,,,\n",
        &zone,
    )
    .unwrap();
    let old = Registry::from_csv(b"meter_id,kind\nOLD,water\n", &zone).unwrap();
    for sql in old.insert_sql("mf_reg", TimeColumns::Millis, 1_000) {
        ch.ok(&sql);
    }
    for sql in registry.insert_sql("mf_reg", TimeColumns::Millis, 2_000) {
        ch.ok(&sql);
    }
    // An import cut short: records without their marker.
    let half = Registry::from_csv(b"meter_id,kind\nHALF,gas\n", &zone).unwrap();
    let statements = half.insert_sql("mf_reg", TimeColumns::Millis, 3_000);
    ch.ok(&statements[0]);
    let newest = Registry::complete_import(&ch.ok(&Registry::imports_sql("mf_reg")));
    assert_eq!(newest, Some(2_000));
    let back =
        Registry::from_tsv(&ch.ok(&Registry::select_sql("mf_reg", TimeColumns::Millis, 2_000)))
            .unwrap();
    assert_eq!(back, registry);
}

/// The revenue-protection panels of the Grafana dashboard (losses per feeder, events per kind,
/// suspect meters) on a current ClickHouse, with the figures tests/it/deploy.rs checks on
/// 18.16.
#[test]
fn the_revenue_panels_count_right_on_a_current_clickhouse() {
    let mut ch = Chdb::start();
    let config = ClickHouseConfig {
        database: "mf_rp".into(),
        ..ClickHouseConfig::default()
    };
    ch.apply_schema(&config);
    ch.ok(
        "INSERT INTO mf_rp.meters (imported_at, meter_id, kind, model, expected_interval_s, district, feeder, transformer, role, import_only, tariff, valid_from, valid_to, line) VALUES \
         (1, 'C9', 'electricity', '', NULL, 'D', 'F1', '', 'customer', 0, '', NULL, NULL, 2), \
         (2, 'H1', 'electricity', '', 900, 'D', 'F1', '', 'feeder_head', 0, '', NULL, NULL, 2), \
         (2, 'C1', 'electricity', '', 900, 'D', 'F1', '', 'customer', 1, '', NULL, NULL, 3), \
         (2, 'C2', 'electricity', '', 900, 'D', 'F1', '', 'customer', 1, '', NULL, NULL, 4), \
         (1, '', '', '', NULL, '', '', '', '', 0, '', NULL, NULL, 1), \
         (2, '', '', '', NULL, '', '', '', '', 0, '', NULL, NULL, 3)",
    );
    let reading = |meter: &str, ts: &str, value: f64| {
        format!("('{meter}', '1-0:1.8.0', toDateTime64('{ts}', 3, 'UTC'), {value}, 'kWh', 0, toDateTime64('{ts}', 3, 'UTC'), 'mqtt', 'json')")
    };
    let mut rows = Vec::new();
    for (meter, before, after) in [
        ("H1", 1000.0, 1100.0),
        ("C1", 500.0, 540.0),
        ("C2", 200.0, 230.0),
        ("C9", 10.0, 25.0),
    ] {
        rows.push(reading(meter, "2026-03-29 22:00:00", before));
        rows.push(reading(meter, "2026-03-30 20:00:00", after));
    }
    for (ts, value) in [
        ("2026-03-04 01:00:00", 100.0),
        ("2026-03-16 01:00:00", 220.0),
        ("2026-03-25 01:00:00", 221.0),
        ("2026-03-30 01:00:00", 225.0),
    ] {
        rows.push(reading("S1", ts, value));
    }
    ch.ok(&format!(
        "INSERT INTO mf_rp.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) VALUES {}",
        rows.join(", ")
    ));
    ch.ok(
        "INSERT INTO mf_rp.events (meter_id, ts, kind, severity, source, code, detail, raw) VALUES \
         ('S1', toDateTime64('2026-03-30 01:00:00', 3, 'UTC'), 'magnetic_tamper', 'critical', 'mqtt', 'bit 4', '', ''), \
         ('S1', toDateTime64('2026-03-30 01:00:00', 3, 'UTC'), 'magnetic_tamper', 'critical', 'mqtt', 'bit 4', '', ''), \
         ('E2', toDateTime64('2026-03-29 01:00:00', 3, 'UTC'), 'forged_publish', 'critical', 'mqtt', 'E1', '', ''), \
         ('P1', toDateTime64('2026-03-29 02:00:00', 3, 'UTC'), 'power_failure', 'warning', 'mqtt', '1-0:99.97.0 240', '', '')",
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/meterflow.json")).unwrap();
    let mut panel = |prefix: &str| {
        let panel = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"].as_str().unwrap_or("").starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}"));
        let sql = panel["targets"][0]["rawSql"]
            .as_str()
            .unwrap()
            .replace("meterflow.", "mf_rp.")
            .replace(
                "$__fromTime",
                "toDateTime64('2026-03-24 00:00:00', 3, 'UTC')",
            )
            .replace("$__toTime", "toDateTime64('2026-03-31 00:00:00', 3, 'UTC')");
        ch.rows(&sql)
    };
    let brief = |rows: Vec<Vec<String>>, columns: &[usize]| -> Vec<String> {
        rows.iter()
            .map(|r| {
                columns
                    .iter()
                    .map(|c| r[*c].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(
        brief(panel("Losses per feeder"), &[0, 1, 2]),
        ["2026-03-29 F1 0", "2026-03-30 F1 30"]
    );
    let events = brief(panel("Events per day and kind"), &[1, 2]);
    assert_eq!(
        events,
        ["forged_publish 1", "power_failure 1", "magnetic_tamper 1"]
    );
    assert_eq!(
        brief(panel("Suspect meters"), &[0, 1, 2, 4]),
        // (NULL: E2 has no readings; this harness gives NULL as empty.)
        ["S1 1 magnetic_tamper 0.14", "E2 1 forged_publish "]
    );
}
