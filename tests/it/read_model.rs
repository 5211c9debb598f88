//! The read model billing runs on (`meterflow_storage::readings`): the same readings written
//! to a real ClickHouse (Debian's 18.16) and to the Parquet tree, read back through both
//! sources with the same requests (windows, margins, one meter, all meters), must give
//! identical series, bit for bit, before and after ClickHouse merges its parts.

use std::path::Path;
use std::process::Command;

use arrow_array::RecordBatch;
use meterflow_proto::{ReadingBatchBuilder, TextRow};
use meterflow_storage::clickhouse::{
    apply_schema, encode_rowbinary, ClickHouseConfig, TimeColumns,
};
use meterflow_storage::readings::clickhouse::{read_sql, series_from_answers};
use meterflow_storage::readings::{self, Channels, Neighbours, ReadRequest, Series};
use meterflow_storage::{ParquetConfig, ParquetSink, StorageError};

use crate::clickhouse_current::Chdb;
use crate::harness::ClickHouse;

const S: i64 = 1000;
const H: i64 = 3600 * S;
const D: i64 = 24 * H;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000;
/// The period most requests ask about: 2024-03-10 .. 2024-03-12.
const FROM: i64 = T0 + 9 * D;
const TO: i64 = T0 + 11 * D;

/// One reading: (meter, channel, ts, value, unit, received_at), times in whole seconds (the
/// `DateTime` of 18.16 keeps no more).
type Reading = (String, String, i64, f64, String, i64);

/// A small deterministic generator (no dependency, the same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// The fleet, as two deliveries (at least once: some readings come in both, received later
/// the second time, some with a corrected value); with `millis`, times not on whole seconds.
fn fleet(millis: bool) -> [Vec<Reading>; 2] {
    let mut rng = Lcg(21);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    let mut push = |r: Reading, rng: &mut Lcg| {
        match rng.next(10) {
            // delivered twice, the same value, received later
            0 => again.push((r.0.clone(), r.1.clone(), r.2, r.3, r.4.clone(), r.5 + 7 * S)),
            // delivered twice, the later copy corrected
            1 => again.push((
                r.0.clone(),
                r.1.clone(),
                r.2,
                r.3 + 0.125,
                r.4.clone(),
                r.5 + 60 * S,
            )),
            _ => {}
        }
        first.push(r);
    };
    // 12 meters, 3 cumulative registers and two channels that are none, reading at
    // irregular times (1 to 9 hours apart) from 02-20 to 03-25, across every midnight.
    for m in 0..12 {
        let meter = format!("mtr-{m:02}");
        for (channel, unit) in [
            ("1-0:1.8.0", "kWh"),
            ("1-0:2.8.0", "kWh"),
            ("0-1:24.2.1", "m3"),
            ("1-0:1.29.0", "kWh"),
            ("1-0:32.7.0", "V"),
        ] {
            let mut ts = T0 - 10 * D + rng.next(3600) as i64 * S;
            let mut value = 1000.0 * m as f64 + 0.1;
            while ts < T0 + 25 * D {
                // meter 5's gas register is silent from 02-25 to 03-11 05:00 (40 days before
                // the end of the period's margin... and more than a margin before it)
                let silent = m == 5
                    && channel == "0-1:24.2.1"
                    && ts > T0 - 5 * D
                    && ts < T0 + 10 * D + 5 * H;
                // meter 7 stops for good on 03-10 at noon: nothing after the period
                let stopped = m == 7 && ts > T0 + 9 * D + 12 * H;
                if !silent && !stopped {
                    let unit = if m == 3 && channel == "1-0:1.8.0" && ts > T0 + 10 * D {
                        "Wh" // reconfigured: the newest unit is the series'
                    } else {
                        unit
                    };
                    let received = ts + (1 + rng.next(600) as i64) * S;
                    let (ts, received) = if millis {
                        (ts + rng.next(1000) as i64, received + rng.next(1000) as i64)
                    } else {
                        (ts, received)
                    };
                    push(
                        (
                            meter.clone(),
                            channel.into(),
                            ts,
                            value,
                            unit.into(),
                            received,
                        ),
                        &mut rng,
                    );
                }
                ts += (1 + rng.next(9) as i64) * H + rng.next(3600) as i64 * S;
                value += rng.next(1000) as f64 / 64.0;
            }
        }
    }
    // A meter silent for 40 days before the period (its reading then delivered again,
    // corrected), with one reading in it.
    let r = |meter: &str, ts: i64, value: f64, received: i64| -> Reading {
        (
            meter.into(),
            "1-0:1.8.0".into(),
            ts,
            value,
            "kWh".into(),
            received,
        )
    };
    first.push(r("silent", FROM - 41 * D, 5.0, FROM - 41 * D + S));
    first.push(r("silent", FROM - 40 * D, 5.5, FROM - 40 * D + S));
    again.push(r("silent", FROM - 40 * D, 5.75, FROM - 40 * D + 2 * S));
    first.push(r("silent", FROM + 3 * H, 6.25, FROM + 3 * H + S));
    // A meter silent through the period and its margins: its last reading 20 days before,
    // delivered again later in Wh (the later copy's unit counts).
    first.push(r("quiet", FROM - 25 * D, 3.0, FROM - 25 * D + S));
    first.push(r("quiet", FROM - 20 * D, 4.0, FROM - 20 * D + S));
    let mut wh = r("quiet", FROM - 20 * D, 4000.0, FROM - 20 * D + 5 * S);
    wh.4 = "Wh".into();
    again.push(wh);
    // Values that are not numbers are not read: the reading before the period is then the
    // one before the NaN, and the infinite ones in the window are not readings. (Not a later
    // copy of a finite reading: ClickHouse's merges would keep that copy alone, see the read
    // model's documentation.)
    first.push(r("nan", FROM - 2 * D, 7.0, FROM - 2 * D + S));
    first.push(r("nan", FROM - D, f64::NAN, FROM - D + S));
    first.push(r("nan", FROM + H, 8.0, FROM + H + S));
    again.push(r(
        "nan",
        FROM + 90 * 60 * S,
        f64::INFINITY,
        FROM + H + 9 * S,
    ));
    first.push(r("nan", FROM + 2 * H, f64::NEG_INFINITY, FROM + 2 * H + S));
    // A register reconfigured from kWh to Wh while silent: its reading before the period is
    // in kWh, those in it in Wh (one of its `other_units`).
    first.push(r("rewired", FROM - 10 * D, 5_000.0, FROM - 10 * D + S));
    let mut wh = r("rewired", FROM + 5 * H, 5_000_250.0, FROM + 5 * H + S);
    wh.4 = "Wh".into();
    first.push(wh);
    // A meter with readings only far outside the period: no series.
    first.push(r("away", T0 - 60 * D, 1.0, T0 - 60 * D + S));
    first.push(r("away", T0 + 60 * D, 2.0, T0 + 60 * D + S));
    [first, again]
}

fn batch(readings: &[Reading]) -> RecordBatch {
    let mut b = ReadingBatchBuilder::default();
    for (meter_id, channel, ts_ms, value, unit, received_at_ms) in readings {
        b.append_text(&TextRow {
            meter_id,
            channel,
            ts_ms: *ts_ms,
            value: *value,
            unit,
            quality: 0,
            received_at_ms: *received_at_ms,
            source: "mqtt",
            format: "pb",
        });
    }
    b.finish()
}

/// `INSERT INTO {db}.readings FORMAT RowBinary` with the encoder meterflow's writer uses.
fn insert(ch: &ClickHouse, db: &str, readings: &[Reading], dir: &Path) {
    let body = encode_rowbinary(&batch(readings), TimeColumns::Seconds).unwrap();
    let file = dir.join("body.bin");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "{}/?query=INSERT%20INTO%20{db}.readings%20FORMAT%20RowBinary",
            ch.url
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn parquet_series(data_dir: &Path, req: &ReadRequest) -> Vec<Series> {
    let mut out = Vec::new();
    readings::parquet::read(data_dir, req, |s| {
        out.push(s);
        Ok::<_, StorageError>(())
    })
    .unwrap();
    out
}

fn clickhouse_series(
    runtime: &tokio::runtime::Runtime,
    config: &ClickHouseConfig,
    req: &ReadRequest,
) -> Vec<Series> {
    let mut out = Vec::new();
    runtime
        .block_on(readings::clickhouse::read(config, req, |s| {
            out.push(s);
            Ok::<_, StorageError>(())
        }))
        .unwrap();
    out
}

/// A series with each value as its bits: (meter, channel, unit, points, other units).
type Bits = (String, String, String, Vec<(i64, u64)>, Vec<String>);

/// The series with each value as its bits: equal only if identical.
fn bits(series: &[Series]) -> Vec<Bits> {
    series
        .iter()
        .map(|s| {
            (
                s.meter_id.clone(),
                s.channel.clone(),
                s.unit.clone(),
                s.points.iter().map(|(t, v)| (*t, v.to_bits())).collect(),
                s.other_units.clone(),
            )
        })
        .collect()
}

fn requests() -> Vec<(&'static str, ReadRequest)> {
    let req = |from_ms, to_ms, margin_ms, meter: Option<&str>| ReadRequest {
        from_ms,
        to_ms,
        margin_ms,
        meter: meter.map(str::to_string),
        channels: Channels::CumulativeRegisters,
        neighbours: Neighbours::BeforeAndAfter,
        before_since_ms: None,
        silent_since_ms: None,
    };
    vec![
        ("the period, an hour's margin", req(FROM, TO, H, None)),
        ("the period, no margin", req(FROM, TO, 0, None)),
        ("the period, a day's margin", req(FROM, TO, D, None)),
        ("one meter", req(FROM, TO, H, Some("mtr-03"))),
        ("the silent meter", req(FROM, TO, H, Some("silent"))),
        ("a meter outside", req(FROM, TO, H, Some("away"))),
        ("an instant", req(FROM + 5 * H, FROM + 5 * H, 0, None)),
        (
            "bounds inside a second",
            req(FROM + 1_500, TO - 500, 2 * H + 250, None),
        ),
        ("a month", req(T0, T0 + 31 * D, 0, None)),
        (
            "before any reading",
            req(T0 - 300 * D, T0 - 200 * D, D, None),
        ),
        (
            "after every reading",
            req(T0 + 200 * D, T0 + 300 * D, D, None),
        ),
        (
            "silent series too",
            ReadRequest {
                silent_since_ms: Some(FROM - 30 * D),
                ..req(FROM, TO, H, None)
            },
        ),
        (
            "silent series, from just after the quiet meter's reading",
            ReadRequest {
                silent_since_ms: Some(FROM - 20 * D + 1),
                ..req(FROM, TO, H, None)
            },
        ),
        (
            "the quiet meter alone",
            ReadRequest {
                silent_since_ms: Some(FROM - 30 * D),
                ..req(FROM, TO, H, Some("quiet"))
            },
        ),
        (
            "the reading before only, a day back at most",
            ReadRequest {
                neighbours: Neighbours::Before,
                before_since_ms: Some(FROM - D),
                ..req(FROM, TO, 0, None)
            },
        ),
    ]
}

#[test]
fn parquet_and_clickhouse_give_the_same_series_bit_for_bit() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_read");
    let config = ClickHouseConfig {
        url: ch.url.clone(),
        database: db.clone(),
        ..Default::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(apply_schema(&config, false)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let [first, again] = fleet(false);
    assert!(
        first.len() > 5_000 && again.len() > 500,
        "{} {}",
        first.len(),
        again.len()
    );
    for (name, readings) in [("first", &first), ("again", &again)] {
        insert(&ch, &db, readings, tmp.path());
        let config = ParquetConfig {
            row_group_rows: 500,
            ..Default::default()
        };
        let sink = ParquetSink::open_named(&data_dir, config, name).unwrap();
        sink.write_named(&batch(readings), name).unwrap();
    }

    // `merged`: ClickHouse has merged the parts, and a merge keeps one copy of a reading: the
    // conflicting copies (VEE's `conflict`) are gone there, while Parquet keeps them; every
    // other answer, the times of receipt included, stays the same.
    let compare = |when: &str, merged: bool| {
        for (what, req) in requests() {
            let mut from_parquet = parquet_series(&data_dir, &req);
            let mut from_clickhouse = clickhouse_series(&runtime, &config, &req);
            assert_eq!(
                bits(&from_parquet),
                bits(&from_clickhouse),
                "{what} ({when})"
            );
            if merged {
                assert!(from_clickhouse.iter().all(|s| s.conflicts.is_empty()));
                for s in from_parquet.iter_mut().chain(from_clickhouse.iter_mut()) {
                    s.conflicts.clear();
                }
            } else if what.starts_with("the period") {
                assert!(
                    from_parquet.iter().any(|s| !s.conflicts.is_empty()),
                    "{what}: the fleet has conflicting copies"
                );
            }
            assert_eq!(from_parquet, from_clickhouse, "{what} ({when})");
        }
    };
    compare("parts not merged", false);

    // What the answers are, not only that they agree.
    let period = requests()[0].1.clone();
    let got = parquet_series(&data_dir, &period);
    let keys: Vec<(&str, &str)> = got
        .iter()
        .map(|s| (s.meter_id.as_str(), s.channel.as_str()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes())));
    sorted.dedup();
    assert_eq!(keys, sorted, "in (meter, channel) byte order, each once");
    assert_eq!(
        got.len(),
        12 * 3 + 3,
        "every register of every meter, the silent one, the one with non-numbers, the rewired one"
    );
    let rewired = got.iter().find(|s| s.meter_id == "rewired").unwrap();
    assert_eq!(
        (rewired.unit.as_str(), rewired.other_units.as_slice()),
        ("Wh", ["kWh".to_string()].as_slice()),
        "the reading before the period is in kWh"
    );
    let nan = got.iter().find(|s| s.meter_id == "nan").unwrap();
    assert_eq!(
        nan.points,
        [(FROM - 2 * D, 7.0), (FROM + H, 8.0)],
        "non-numbers are not read: not as the reading before, not in the window"
    );
    assert!(
        !keys.contains(&("quiet", "1-0:1.8.0")),
        "silent: not asked for"
    );
    let with_silent = requests()
        .into_iter()
        .find(|(what, _)| *what == "silent series too")
        .unwrap()
        .1;
    let got_silent = parquet_series(&data_dir, &with_silent);
    assert_eq!(got_silent.len(), got.len() + 1);
    let quiet = got_silent.iter().find(|s| s.meter_id == "quiet").unwrap();
    assert_eq!(
        (quiet.points.as_slice(), quiet.unit.as_str()),
        ([(FROM - 20 * D, 4000.0)].as_slice(), "Wh"),
        "its last reading alone, as delivered last"
    );
    assert!(keys
        .iter()
        .all(|(_, c)| !c.contains(".29.") && !c.contains("32.7")));
    let silent = got.iter().find(|s| s.meter_id == "silent").unwrap();
    assert_eq!(
        silent.points,
        [(FROM - 40 * D, 5.75), (FROM + 3 * H, 6.25)],
        "the reading 40 days before (its later delivery), and nothing after"
    );
    let unit = |meter: &str, channel: &str| {
        got.iter()
            .find(|s| s.meter_id == meter && s.channel == channel)
            .map(|s| s.unit.clone())
            .unwrap()
    };
    assert_eq!(unit("mtr-03", "1-0:1.8.0"), "Wh");
    assert_eq!(unit("mtr-04", "1-0:1.8.0"), "kWh");
    let (lo, hi) = period.window();
    for s in &got {
        assert!(s.points.windows(2).all(|w| w[0].0 < w[1].0), "{s:?}");
        let inside: Vec<_> = s
            .points
            .iter()
            .filter(|(t, _)| (lo..=hi).contains(t))
            .collect();
        assert!(!inside.is_empty());
        // Every reading of the window, each as its latest delivery of a number says.
        let mut want: Vec<(i64, f64, i64)> = first
            .iter()
            .chain(&again)
            .filter(|r| r.0 == s.meter_id && r.1 == s.channel && (lo..=hi).contains(&r.2))
            .filter(|r| r.3.is_finite())
            .map(|r| (r.2, r.3, r.5))
            .collect();
        want.sort_by_key(|w| (w.0, w.2));
        let mut latest: Vec<(i64, f64)> = Vec::new();
        for (t, v, _) in want {
            match latest.last_mut() {
                Some(last) if last.0 == t => last.1 = v,
                _ => latest.push((t, v)),
            }
        }
        assert_eq!(
            inside.into_iter().copied().collect::<Vec<_>>(),
            latest,
            "{}",
            s.meter_id
        );
    }
    // mtr-07 stops at noon on 03-10: its series end there, with nothing after.
    for s in got.iter().filter(|s| s.meter_id == "mtr-07") {
        assert!(s.points.last().unwrap().0 <= FROM + 12 * H, "{s:?}");
    }
    // mtr-05's gas register: its reading before the window is 40 days earlier or so.
    let gas = got
        .iter()
        .find(|s| s.meter_id == "mtr-05" && s.channel == "0-1:24.2.1")
        .unwrap();
    assert!(gas.points[0].0 <= T0 - 5 * D, "{gas:?}");

    // Once ClickHouse has merged every part (one row per reading), the same answers.
    ch.query(&format!("OPTIMIZE TABLE {db}.readings FINAL"));
    compare("parts merged", true);
    ch.query(&format!("DROP DATABASE {db}"));
}

/// The same on a current ClickHouse (chdb, 26.x: `DateTime64(3)`), with times in
/// milliseconds: the SQL of the read model run there and its RowBinary answers parsed as
/// `read` parses them, against the Parquet tree of the same readings.
#[test]
fn a_current_clickhouse_gives_the_same_series_in_milliseconds() {
    let mut chdb = Chdb::start();
    let config = ClickHouseConfig {
        database: "mf_read".into(),
        ..Default::default()
    };
    chdb.apply_schema(&config);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let [first, again] = fleet(true);
    assert!(first.iter().any(|r| r.2 % S != 0));
    for (name, readings) in [("first", &first), ("again", &again)] {
        let body = tmp.path().join(format!("{name}.bin"));
        let batch = batch(readings);
        std::fs::write(
            &body,
            encode_rowbinary(&batch, TimeColumns::Millis).unwrap(),
        )
        .unwrap();
        chdb.ok(&format!(
            "INSERT INTO mf_read.readings FROM INFILE '{}' FORMAT RowBinary",
            body.display()
        ));
        let sink = ParquetSink::open_named(&data_dir, ParquetConfig::default(), name).unwrap();
        sink.write_named(&batch, name).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (what, req) in requests() {
        let sql = read_sql("mf_read", &req, TimeColumns::Millis).unwrap();
        let mut run = |sql: Option<&String>| {
            sql.map(|q| chdb.run(q, "RowBinary").unwrap())
                .unwrap_or_default()
        };
        let (window, neighbours, silent) = (
            run(Some(&sql.window)),
            run(sql.neighbours.as_ref()),
            run(sql.silent.as_ref()),
        );
        let from_clickhouse = runtime
            .block_on(series_from_answers(window, neighbours, silent, &req))
            .unwrap();
        let from_parquet = parquet_series(&data_dir, &req);
        assert_eq!(bits(&from_parquet), bits(&from_clickhouse), "{what}");
        if what == "the period, an hour's margin" {
            assert_eq!(from_parquet.len(), 12 * 3 + 3);
        }
    }
}
