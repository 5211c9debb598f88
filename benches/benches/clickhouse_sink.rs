//! The ClickHouse sink's insert rate beside `clickhouse-client` inserting the same rows from a
//! Native file, in one run on one server (not criterion: each side is one timed bulk load).
//!
//! `benches/clickhouse_sink.sh` starts a private server and runs this with
//! `METERFLOW_BENCH_CLICKHOUSE_URL` and `METERFLOW_BENCH_CLICKHOUSE_PORT` (native TCP) set.
//! Under `cargo test` (no `--bench` argument) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::process::{Command, Stdio};
use std::time::Instant;

use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};
use meterflow_storage::clickhouse::{apply_schema, insert_batch, time_columns, ClickHouseConfig};

const METERS: usize = 10_000;
const READINGS_PER_METER: usize = 200;
const BATCH_ROWS: usize = 100_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let url =
        std::env::var("METERFLOW_BENCH_CLICKHOUSE_URL").expect("METERFLOW_BENCH_CLICKHOUSE_URL");
    let port =
        std::env::var("METERFLOW_BENCH_CLICKHOUSE_PORT").expect("METERFLOW_BENCH_CLICKHOUSE_PORT");
    let config = ClickHouseConfig {
        url: url.clone(),
        database: "mf_bench".into(),
        ..Default::default()
    };
    let client = |sql: &str| {
        let out = Command::new("clickhouse-client")
            .args(["--port", &port, "--query", sql])
            .output()
            .expect("clickhouse-client runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client("DROP DATABASE IF EXISTS mf_bench");
    let version = runtime.block_on(apply_schema(&config)).expect("schema");
    let times = runtime
        .block_on(time_columns(&config))
        .expect("column types");

    // The rows: 10 000 meters x 200 quarter-hour register readings, in batches as the batcher makes them.
    let mut batches = Vec::new();
    let mut builder = ReadingBatchBuilder::with_capacity(BATCH_ROWS);
    let ids: Vec<String> = (0..METERS).map(|m| format!("bench-{m:06}")).collect();
    for k in 0..READINGS_PER_METER {
        for (m, id) in ids.iter().enumerate() {
            let meta = RowMeta {
                meter_id: id,
                received_at_ms: 1_719_900_000_000,
                source: Source::Mqtt,
                format: Format::Pb,
            };
            let ts = 1_719_792_000_000 + k as i64 * 900_000;
            builder.append(
                &meta,
                "1-0:1.8.1",
                ts,
                (m * 1000 + k) as f64 / 4.0,
                "kWh",
                0,
            );
            if builder.len() == BATCH_ROWS {
                batches.push(builder.finish());
            }
        }
    }
    if !builder.is_empty() {
        batches.push(builder.finish());
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();

    let started = Instant::now();
    for batch in &batches {
        runtime
            .block_on(insert_batch(&config, times, batch))
            .expect("insert");
    }
    let sink_s = started.elapsed().as_secs_f64();
    assert_eq!(
        client("SELECT count() FROM mf_bench.readings"),
        rows.to_string()
    );

    // The reference: the same rows as a Native file, loaded by clickhouse-client.
    let native = std::env::temp_dir().join("meterflow-bench-readings.native");
    let file = std::fs::File::create(&native).unwrap();
    let out = Command::new("clickhouse-client")
        .args([
            "--port",
            &port,
            "--query",
            "SELECT * FROM mf_bench.readings FORMAT Native",
        ])
        .stdout(file)
        .status()
        .unwrap();
    assert!(out.success());
    client("CREATE TABLE mf_bench.readings_copy AS mf_bench.readings");
    let started = Instant::now();
    let status = Command::new("clickhouse-client")
        .args([
            "--port",
            &port,
            "--query",
            "INSERT INTO mf_bench.readings_copy FORMAT Native",
        ])
        .stdin(std::fs::File::open(&native).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let native_s = started.elapsed().as_secs_f64();
    assert!(status.success());
    assert_eq!(
        client("SELECT count() FROM mf_bench.readings_copy"),
        rows.to_string()
    );
    let bytes = std::fs::metadata(&native).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&native);
    client("DROP DATABASE mf_bench");

    println!(
        "| ClickHouse {}.{} | rows | seconds | rows/s |",
        version.major, version.minor
    );
    println!("|---|---|---|---|");
    println!(
        "| meterflow sink (RowBinary from Arrow over HTTP, {} batches of {BATCH_ROWS}) | {rows} | {sink_s:.2} | {:.0} |",
        batches.len(),
        rows as f64 / sink_s
    );
    println!(
        "| clickhouse-client, Native file ({:.0} MiB) over TCP | {rows} | {native_s:.2} | {:.0} |",
        bytes as f64 / 1048576.0,
        rows as f64 / native_s
    );
}
