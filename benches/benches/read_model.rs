//! The read model billing runs on (`meterflow_storage::readings`), from the Parquet tree and
//! from ClickHouse, on the same ~2M readings: 1000 meters × 2 registers × 1000 reads every
//! 15 minutes (10.4 days across 11 date folders), 2 % of them delivered twice. Not criterion:
//! each source is one read, timed by the caller (`/usr/bin/time -v` gives CPU seconds and peak
//! RSS), so each runs in a process of its own:
//!
//! ```text
//! cargo bench -p meterflow-benches --bench read_model -- write DIR [URL DB]
//! target/release/deps/read_model-* parquet DIR [METER]
//! target/release/deps/read_model-* clickhouse URL DB [METER]
//! ```
//!
//! `write` puts the readings under `DIR/readings/` (the sink's files) and, with a URL, into
//! `DB.readings` (schema applied, RowBinary). `parquet` and `clickhouse` read the period
//! from 12 hours after the first reading to 12 hours before the last, no margin (so every
//! series also needs its reading before the period), and print what they delivered with a
//! checksum that must be the same for both. Under `cargo test` (no arguments) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench fails loudly

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use meterflow_proto::{ReadingBatchBuilder, TextRow};
use meterflow_storage::clickhouse::{
    apply_schema, encode_rowbinary, time_columns, ClickHouseConfig,
};
use meterflow_storage::readings::{self, Channels, Neighbours, ReadRequest, Series};
use meterflow_storage::{ParquetConfig, ParquetSink, StorageError};

const METERS: i64 = 1000;
const READS: i64 = 1000;
const STEP: i64 = 15 * 60_000;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000;
const REGISTERS: [&str; 2] = ["1-0:1.8.0", "1-0:2.8.0"];

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => {}
        ["write", dir] => write(Path::new(dir), None),
        ["write", dir, url, db] => write(Path::new(dir), Some((url, db))),
        ["parquet", dir, meter @ ..] => {
            let started = Instant::now();
            let mut sum = Checksum::default();
            readings::parquet::read(Path::new(dir), &request(meter.first()), |s| {
                sum.add(&s);
                Ok::<_, StorageError>(())
            })
            .unwrap();
            sum.print("parquet", started);
        }
        ["clickhouse", url, db, meter @ ..] => {
            let config = config(url, db);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let mut sum = Checksum::default();
            runtime
                .block_on(readings::clickhouse::read(
                    &config,
                    &request(meter.first()),
                    |s| {
                        sum.add(&s);
                        Ok::<_, StorageError>(())
                    },
                ))
                .unwrap();
            sum.print("clickhouse", started);
        }
        other => {
            panic!("unknown arguments {other:?}: see the top of benches/benches/read_model.rs")
        }
    }
}

fn config(url: &str, db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_string(),
        database: db.to_string(),
        ..Default::default()
    }
}

fn request(meter: Option<&&str>) -> ReadRequest {
    ReadRequest {
        from_ms: T0 + 12 * 3_600_000,
        to_ms: T0 + READS * STEP - 12 * 3_600_000,
        margin_ms: 0,
        meter: meter.map(|m| m.to_string()),
        channels: Channels::CumulativeRegisters,
        neighbours: Neighbours::BeforeAndAfter,
        before_since_ms: None,
        silent_since_ms: None,
    }
}

/// Writes the readings, one 15-minute tick of the whole fleet at a time (as `serve` gets
/// them), with 2 % delivered again a minute later.
fn write(dir: &Path, clickhouse: Option<(&str, &str)>) {
    let started = Instant::now();
    let mut sink = ParquetSink::open(dir, ParquetConfig::default(), "bench").unwrap();
    let target = clickhouse.map(|(url, db)| {
        let config = config(url, db);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(apply_schema(&config, false)).unwrap();
        let times = runtime.block_on(time_columns(&config)).unwrap();
        (config, times)
    });
    let mut rows = 0;
    let mut seed = 7u64;
    let mut body = Vec::new();
    for tick in 0..READS {
        let mut b = ReadingBatchBuilder::with_capacity(2 * METERS as usize);
        let ts = T0 + tick * STEP;
        for m in 0..METERS {
            let meter = format!("meter-{m:04}");
            for (r, channel) in REGISTERS.iter().enumerate() {
                let value = (m * 10_000 + r as i64 * 5_000) as f64 + tick as f64 * 0.25;
                let mut row = TextRow {
                    meter_id: &meter,
                    channel,
                    ts_ms: ts,
                    value,
                    unit: "kWh",
                    quality: 0,
                    received_at_ms: ts + 5_000,
                    source: "mqtt",
                    format: "pb",
                };
                b.append_text(&row);
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if (seed >> 33).is_multiple_of(50) {
                    row.received_at_ms += 60_000;
                    b.append_text(&row);
                }
            }
        }
        let batch = b.finish();
        rows += batch.num_rows();
        sink.write(&batch, None, Instant::now()).unwrap();
        if let Some((_, times)) = &target {
            body.extend(encode_rowbinary(&batch, *times).unwrap());
        }
    }
    sink.close().unwrap();
    println!("parquet: {rows} rows written in {:.2?}", started.elapsed());
    if let Some((config, _)) = target {
        let file = dir.join("readings.rowbinary");
        std::fs::write(&file, &body).unwrap();
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!(
                "{}/?query=INSERT%20INTO%20{}.readings%20FORMAT%20RowBinary",
                config.url, config.database
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::fs::remove_file(&file).unwrap();
        println!(
            "clickhouse: {rows} rows inserted in {:.2?}",
            started.elapsed()
        );
    }
}

/// What a source delivered, with a checksum of every point's time and value bits.
#[derive(Default)]
struct Checksum {
    series: usize,
    points: usize,
    hash: u64,
}

impl Checksum {
    fn add(&mut self, s: &Series) {
        self.series += 1;
        self.points += s.points.len();
        for (i, (ts, value)) in s.points.iter().enumerate() {
            let h =
                (*ts as u64).rotate_left(17) ^ value.to_bits() ^ (i as u64) ^ self.series as u64;
            self.hash = self.hash.wrapping_mul(0x100_0000_01b3).wrapping_add(h);
        }
    }

    fn print(&self, source: &str, started: Instant) {
        println!(
            "{source}: {} series, {} points, checksum {:016x}, {:.3} s",
            self.series,
            self.points,
            self.hash,
            started.elapsed().as_secs_f64()
        );
    }
}
