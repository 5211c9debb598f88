//! The data of the billing benchmark (`benches/billing/run.sh`, issue 21): 10 000 meters × 2
//! registers (1-0:1.8.0 import, 1-0:2.8.0 export, kWh) read every 15 minutes from
//! 2026-02-26T00:00Z to 2026-04-03T00:00Z (March 2026 in Europe/Berlin with 2 to 3 days
//! either side), deterministic. Not criterion: a generator, run by the script:
//!
//! ```text
//! cargo bench -p meterflow-benches --bench billing_data -- write DIR [URL DB]
//! ```
//!
//! It writes the sink's own Parquet tree under `DIR/readings/` (`ParquetSink`, one 15-minute
//! tick of the whole fleet at a time, as `serve` gets them) and, with a URL, the same rows
//! into `DB.readings` (schema applied; RowBinary, one INSERT per day of readings, sent while
//! the next day is generated). Under `cargo test` (no arguments) it does nothing.
//!
//! The registers: import rises by a base load of 50 to 250 W shaped by the hour of day
//! (night 0.6, day 1, evening 2) with noise, in whole Wh; export rises only for the 30 % of
//! meters with solar panels, by day. Every value is a whole number of Wh in kWh. Irregular on
//! purpose:
//! - about 1 % of the series miss 1 to 48 readings in a row somewhere;
//! - meters `E?0017` miss 10 hours of readings around the period's start (2026-02-28T23:00Z),
//!   meters `E?0018` 10 hours around its end (2026-03-31T22:00Z): R(B) is interpolated there;
//! - meter `E04242` reports nothing from 2026-02-27T00:00Z to 2026-03-08T00:00Z (9 days, more
//!   than the 7 days interpolated across): R(from) is carried;
//! - meter `E04243` reports nothing from 2026-03-20T00:00Z to an hour after the period's end
//!   (12 days): R(to) is carried forward from 03-20, though the reading after is nearer (a
//!   reference that carried the nearer reading would disagree);
//! - one series in 1000 (series number ≡ 501 mod 1000) resets to 0 once, in March.
//!
//! No reading is delivered twice (the read model's duplicate rule is not what this measures).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench fails loudly

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use meterflow_proto::{ReadingBatchBuilder, TextRow};
use meterflow_storage::clickhouse::{
    apply_schema, encode_rowbinary, time_columns, ClickHouseConfig,
};
use meterflow_storage::{ParquetConfig, ParquetSink};

const METERS: usize = 10_000;
const REGISTERS: [&str; 2] = ["1-0:1.8.0", "1-0:2.8.0"];
const STEP: i64 = 15 * 60_000;
const TICKS_PER_DAY: i64 = 96;
/// 2026-02-26T00:00:00Z
const T0: i64 = 1_772_064_000_000;
/// 2026-02-26 .. 2026-04-02: 36 days.
const TICKS: i64 = 36 * TICKS_PER_DAY;
/// 2026-02-28T23:00Z and 2026-03-31T22:00Z: March 2026 in Europe/Berlin.
const FROM: i64 = 1_772_319_600_000;
const TO: i64 = 1_774_994_400_000;

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
        other => {
            panic!("unknown arguments {other:?}: see the top of benches/benches/billing_data.rs")
        }
    }
}

/// splitmix64: the same numbers on every run and machine.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number in [0, 1) from a few keys.
fn unit(a: u64, b: u64, c: u64) -> f64 {
    (mix(mix(mix(a) ^ b) ^ c) >> 11) as f64 / (1u64 << 53) as f64
}

/// One register of one meter.
struct Register {
    /// The register's value in Wh.
    wh: u64,
    /// Base load (import) or panel peak (export), W; 0: no panels.
    watts: f64,
    import: bool,
    /// Ticks `[start, end)` without a reading.
    gaps: Vec<(i64, i64)>,
    /// The tick at which the register restarts from 0.
    reset: Option<i64>,
}

impl Register {
    fn new(meter: usize, r: usize) -> Register {
        let s = (meter * 2 + r) as u64;
        let import = r == 0;
        let solar = meter % 10 < 3;
        let wh = if import {
            1_000_000 + (unit(s, 1, 0) * 30_000_000.0) as u64
        } else if solar {
            (unit(s, 1, 0) * 5_000_000.0) as u64
        } else {
            0
        };
        let watts = if import {
            50.0 + unit(s, 2, 0) * 200.0
        } else if solar {
            2_000.0 + unit(s, 2, 0) * 6_000.0
        } else {
            0.0
        };
        let mut gaps = Vec::new();
        if mix(s ^ 0x6761_7073).is_multiple_of(100) {
            let start = (unit(s, 3, 0) * TICKS as f64) as i64;
            let len = 1 + (unit(s, 4, 0) * 48.0) as i64;
            gaps.push((start, start + len));
        }
        let tick_of = |ms: i64| (ms - T0) / STEP;
        match meter % 10_000 {
            m if m % 1000 == 17 => gaps.push((tick_of(FROM) - 24, tick_of(FROM) + 16)),
            m if m % 1000 == 18 => gaps.push((tick_of(TO) - 16, tick_of(TO) + 24)),
            4242 => gaps.push((TICKS_PER_DAY, 10 * TICKS_PER_DAY)),
            // Silent from 03-20 to an hour after the period's end: R(to) is the reading of
            // 03-20 carried forward, not the nearer one after the end.
            4243 => gaps.push((tick_of(1_773_964_800_000), tick_of(TO) + 4)),
            _ => {}
        }
        let reset =
            (s % 1000 == 501).then(|| tick_of(FROM) + 96 + (unit(s, 5, 0) * 28.0 * 96.0) as i64);
        Register {
            wh,
            watts,
            import,
            gaps,
            reset,
        }
    }

    /// Advances to `tick`; its reading, unless the meter is silent then.
    fn at(&mut self, s: u64, tick: i64) -> Option<f64> {
        let hour = (tick % TICKS_PER_DAY) / 4; // UTC
        let noise = unit(s, 6, tick as u64);
        let wh = if self.import {
            let shape = match hour {
                0..=4 | 22 | 23 => 0.6,
                16..=19 => 2.0,
                _ => 1.0,
            };
            self.watts / 4.0 * shape * (0.4 + 1.2 * noise)
        } else if (6..18).contains(&hour) {
            let sun = ((hour as f64 - 5.5) / 12.0 * std::f64::consts::PI).sin();
            self.watts / 4.0 * sun * (0.3 + 0.7 * noise)
        } else {
            0.0
        };
        if self.reset == Some(tick) {
            self.wh = 0;
        }
        self.wh += wh.round() as u64;
        if self.gaps.iter().any(|&(a, b)| (a..b).contains(&tick)) {
            return None;
        }
        Some(self.wh as f64 / 1000.0)
    }
}

fn config(url: &str, db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: url.to_string(),
        database: db.to_string(),
        ..Default::default()
    }
}

/// Sends one INSERT's body to ClickHouse through curl, not waiting for it.
fn insert(config: &ClickHouseConfig, body: Vec<u8>) -> Child {
    let mut child = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", "@-"])
        .arg(format!(
            "{}/?query=INSERT%20INTO%20{}.readings%20FORMAT%20RowBinary",
            config.url, config.database
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || stdin.write_all(&body).unwrap());
    child
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

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
    let meters: Vec<String> = (0..METERS).map(|m| format!("E{m:05}")).collect();
    let mut registers: Vec<Register> = (0..METERS)
        .flat_map(|m| (0..REGISTERS.len()).map(move |r| Register::new(m, r)))
        .collect();
    let mut rows = 0;
    let mut body = Vec::new();
    let mut sending: Option<Child> = None;
    for tick in 0..TICKS {
        let mut b = ReadingBatchBuilder::with_capacity(registers.len());
        let ts = T0 + tick * STEP;
        for (s, register) in registers.iter_mut().enumerate() {
            let Some(value) = register.at(s as u64, tick) else {
                continue;
            };
            b.append_text(&TextRow {
                meter_id: &meters[s / 2],
                channel: REGISTERS[s % 2],
                ts_ms: ts,
                value,
                unit: "kWh",
                quality: 0,
                received_at_ms: ts + 5_000 + (unit(s as u64, 7, tick as u64) * 30.0) as i64 * 1000,
                source: "mqtt",
                format: "pb",
            });
        }
        let batch = b.finish();
        rows += batch.num_rows();
        sink.write(&batch, None, Instant::now()).unwrap();
        if let Some((config, times)) = &target {
            body.extend(encode_rowbinary(&batch, *times).unwrap());
            if (tick + 1) % TICKS_PER_DAY == 0 {
                if let Some(child) = sending.take() {
                    finish(child);
                }
                sending = Some(insert(config, std::mem::take(&mut body)));
            }
        }
        if (tick + 1) % TICKS_PER_DAY == 0 {
            sink.roll_due(Instant::now() + std::time::Duration::from_secs(3600))
                .unwrap();
        }
    }
    sink.close().unwrap();
    if let Some(child) = sending.take() {
        finish(child);
    }
    println!(
        "{rows} rows written to Parquet{} in {:.1?}",
        if target.is_some() {
            " and ClickHouse"
        } else {
            ""
        },
        started.elapsed()
    );
}
